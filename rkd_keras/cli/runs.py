"""Run folders: start, restart or resume a run, its best checkpoint, and its files.

`runs/<name>/` holds `config.json` (the resolved settings), `status.json`
(running / complete / incomplete), `history.csv`, `best.keras` and
`best.json` (the best epoch on validation Recall@1, or validation accuracy
for classification), `backup/` (Keras's
`BackupAndRestore` state, removed when the run is complete), `metrics.json`,
`tensorboard/` and `report.png` (not for the runs of a comparison, whose
own `report.png` shows them all). Every file is written whole under a temporary
name and renamed, so a reader never sees half of one.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path

import keras

from rkd_keras.cli.config import ConfigError, RunConfig, differences

# Settings a resumed run may take from the command line: where the data is
# read from, which does not change what is trained.
RELOCATABLE = ("data_dir", "manual_dir", "download")
# What a run folder holds (`RunFolder.kind`, saved in its status.json), and the command that continues it.
KINDS = {
    "run": ("a single run (train-teacher, distill or tune)", "the command that started it"),
    "demo": ("the demo's runs (rkd-keras demo)", "rkd-keras demo"),
    "comparison": ("a comparison (rkd-keras compare)", "rkd-keras compare"),
}


def write_json(path, value) -> None:
    """Writes JSON atomically: a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def read_json(path):
    return json.loads(Path(path).read_text())


def resumed_epoch(backup) -> int:
    """Epochs finished and backed up in a `BackupAndRestore` folder: where a resumed run starts (0: none)."""
    metadata = Path(backup) / "training_metadata.json"
    return read_json(metadata)["epoch"] if metadata.exists() else 0


def notice(message):
    """What the command line decided on its own, for the person at the terminal."""
    print(f"rkd-keras: {message}", file=sys.stderr)


class RunFolder:
    """`runs/<name>/`: whether a command starts, restarts or resumes the run there.

    - no folder: the run starts (`--resume` is refused: nothing to resume);
    - a run that never finished an epoch (it failed at start-up, or was
      stopped in its first epoch): the same command starts it again, and the
      folder is replaced;
    - a run with finished epochs: `--resume` continues it with its saved
      settings (only where the data is read from may change); without
      `--resume` it is refused, so nothing is overwritten;
    - a folder of another kind (`KINDS`: a single run, the demo, a
      comparison) is refused, started or not: one command never writes over
      another's folder.

    Args:
        path: The folder.
        kind: What it holds, a key of `KINDS`.
    """

    def __init__(self, path, kind: str = "run"):
        self.path = Path(path)
        self.kind = kind
        self.restart = False

    def status(self) -> str | None:
        file = self.path / "status.json"
        return read_json(file)["status"] if file.exists() else None

    def saved_kind(self) -> str:
        """What the folder's status.json says it holds; folders written before kinds were saved:
        a single run's holds config.json, the demo's does not."""
        saved = read_json(self.path / "status.json").get("kind")
        return saved or ("run" if (self.path / "config.json").exists() else "demo")

    def has_progress(self) -> bool:
        """Whether the run holds anything worth keeping: a finished epoch, or such a stage of the demo or a comparison.

        Stages are run folders anywhere below (a comparison's sit in a folder
        per seed). (A stopped `tune` search holds nothing to resume: it
        starts again.)
        """
        if self.status() == "complete" or resumed_epoch(self.path / "backup") or (self.path / "best.json").exists():
            return True
        stages = [file.parent for file in self.path.glob("*/**/status.json")]
        return any(RunFolder(stage).has_progress() for stage in stages)

    def prepare(self, config: RunConfig | None, resume: bool) -> RunConfig | None:
        """Decides how the command uses this folder, writing nothing yet; returns the settings to run with.

        Raises:
            FileExistsError: the run has progress and `resume` is False, or
                the folder is not a run folder, or one of another kind.
            FileNotFoundError: `resume` and there is no run.
            ConfigError: `resume` with settings that differ from the saved ones.
        """
        status = self.status()
        if status is None:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise FileExistsError(f"{self.path} exists and is not a run folder (no status.json); choose another --name.")
            if resume:
                raise FileNotFoundError(f"cannot resume {self.path}: there is no such run; leave out --resume to start it.")
            return config
        found = self.saved_kind()
        if found != self.kind:
            raise FileExistsError(
                f"{self.path} holds {KINDS[found][0]}, not {KINDS[self.kind][0]}, and is left as it is; choose "
                f"another --name (it is continued by {KINDS[found][1]} with --resume)."
            )
        if not self.has_progress():
            reason = read_json(self.path / "status.json").get("reason", status)
            notice(f"{self.path} never finished an epoch ({reason}); starting it again, the folder is replaced.")
            self.restart = True
            return config
        if not resume:
            raise FileExistsError(
                f"{self.path} exists ({status}); pass --resume to continue it, or --name for a new run."
            )
        if config is None:
            return None
        saved = RunConfig(**read_json(self.path / "config.json"))
        changed = differences(dataclasses.asdict(saved), dataclasses.asdict(config))
        fixed = {key: values for key, values in changed.items() if key not in RELOCATABLE}
        if fixed:
            listed = ", ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in fixed.items())
            raise ConfigError(
                f"cannot resume {self.path} with other settings ({listed}; saved → given): a resumed run keeps "
                "its saved settings. Drop those flags to continue it, or give --name to start a new run with them."
            )
        if changed:
            listed = ", ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in changed.items())
            notice(f"resuming {self.path} reading the data from elsewhere: {listed} (saved → given).")
        return config

    @contextlib.contextmanager
    def running(self, config: RunConfig | None = None):
        """Writes the settings and marks the run running; on any exception (Ctrl-C too) incomplete, with the reason."""
        if self.restart:
            shutil.rmtree(self.path)
            self.restart = False
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_json(self.path / "config.json", dataclasses.asdict(config))
        self.set_status("running")
        try:
            yield
        except BaseException as error:
            self.set_status("incomplete", reason=f"{type(error).__name__}: {error}"[:500])
            raise

    def set_status(self, status, **details):
        write_json(self.path / "status.json", {"status": status, "kind": self.kind, **details})


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the trained network whenever the validation score beats the best epoch of the whole run.

    The score is `monitor` in the epoch's logs (higher is better):
    `val_recall_at_1` for metric learning, `val_accuracy` for classification.
    The best score comes back from `best.json` when a run is resumed, so an
    epoch after the interruption replaces `best.keras` only if it is better
    than every epoch before it.
    """

    def __init__(self, network, path, monitor: str = "val_recall_at_1"):
        super().__init__()
        self.network, self.path, self.monitor = network, Path(path), monitor
        self.record = self.path.with_suffix(".json")
        self.best = read_json(self.record)[monitor] if self.record.exists() else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor, -math.inf)
        if value > self.best:
            self.best = value
            partial = self.path.with_name(".partial." + self.path.name)
            self.network.save(partial)
            os.replace(partial, self.path)
            write_json(self.record, {"epoch": epoch + 1, self.monitor: float(value)})


def read_history(path) -> dict:
    """history.csv as {column: [values]} (CSVLogger rows of every session, resumed ones too)."""
    lines = (Path(path) / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line and not line.startswith("epoch")]
    return {name: [float(row[i]) for row in rows] for i, name in enumerate(header) if name != "epoch"}

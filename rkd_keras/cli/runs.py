"""Run folders: start, restart or resume a run, its best checkpoint, and its files.

`runs/<name>/` holds `config.json` (the resolved settings), `status.json`
(running / complete / incomplete / failed), `history.csv`, `best.keras` and
`best.json` (the best epoch on validation Recall@1, or validation accuracy
for classification), `backup/` (the training state of the last two finished
epochs, `RunBackup`; removed when the run is complete), `metrics.json`,
`tensorboard/` and `report.png` (not for the runs of a comparison, whose
own `report.png` shows them all). Every file is written whole under a temporary
name and renamed, so a reader never sees half of one. One command at a time
writes a run folder: it holds `.<name>.lock` beside it (`RunFolder.locked`).
"""

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
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


# Temporary names of files being written: `.NAME.partial` (JSON) and `.partial.NAME` (Keras files, whose
# name must end as Keras expects). Any left by a killed command are removed by the next one.
PARTIAL_NAMES = (".*.partial", ".partial.*")
# A backup folder's manifest, written last: the epoch, file, size and SHA-256 of its last two backups.
MANIFEST = "backup.json"


def write_json(path, value) -> None:
    """Writes JSON atomically: a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def read_json(path):
    return json.loads(Path(path).read_text())


def resumed_epoch(backup) -> int:
    """Epochs finished and backed up in `backup` as its manifest says (0: none), whether or not the files are whole.

    Folders written before `RunBackup` hold Keras's `BackupAndRestore` state (`training_metadata.json`).
    """
    for name in (MANIFEST, "training_metadata.json"):
        if (Path(backup) / name).exists():
            return read_json(Path(backup) / name)["epoch"]
    return 0


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backups(backup) -> list:
    """The backups `backup`'s manifest lists, newest first; Keras's `BackupAndRestore` state as one without a checksum."""
    backup = Path(backup)
    if (backup / MANIFEST).exists():
        return read_json(backup / MANIFEST)["backups"]
    if (backup / "training_metadata.json").exists():
        return [{"epoch": read_json(backup / "training_metadata.json")["epoch"], "file": "latest.weights.h5"}]
    return []


def _damage(path, entry) -> str | None:
    """What is wrong with a backup file, or None when it is whole: its size and SHA-256 are those recorded."""
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if "bytes" not in entry:  # Keras's BackupAndRestore recorded no size: h5py must open it
        import h5py

        try:
            h5py.File(path, "r").close()
        except OSError as error:
            return f"unreadable ({error})"
        return None
    if size != entry["bytes"]:
        return f"truncated ({size} of its {entry['bytes']} bytes)"
    if _sha256(path) != entry["sha256"]:
        return "damaged (its SHA-256 is not the one recorded when it was written)"
    return None


def usable_backup(backup) -> tuple:
    """The newest whole backup in `backup`: (its epoch, its file), or (0, None) when there is none.

    A damaged backup (truncated, changed, missing) is named on stderr and
    the one before it is used: a resumed run trains the epochs after that
    one again.

    Raises:
        ValueError: backups are listed but none is whole.
    """
    damaged = []
    for entry in _backups(backup):
        path = Path(backup) / entry["file"]
        problem = _damage(path, entry)
        if problem is None:
            if damaged:
                notice(f"{'; '.join(damaged)}; resuming from the backup of epoch {entry['epoch']}, {path}.")
            return entry["epoch"], path
        damaged.append(f"the backup of epoch {entry['epoch']}, {path}, is {problem}")
    if damaged:
        folder = Path(backup).parent
        raise ValueError(
            f"cannot resume {folder}: {'; '.join(damaged)}, and no earlier backup is whole. Its best.keras is "
            f"kept; delete {folder} to train it again, or give --name to start a new run."
        )
    return 0, None


def trim_history(path, epochs: int) -> None:
    """Keeps the rows of history.csv's first `epochs` epochs: those a resumed run continues from.

    A run killed after logging an epoch but before its backup was whole
    trains that epoch again; its row is logged again then, once. (A row
    cut short by the kill is dropped too.)
    """
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)

    def continued(line):
        epoch = line.split(",", 1)[0]
        return epoch == "epoch" or (epoch.isdigit() and int(epoch) < epochs)

    kept = [line for line in lines[1:] if continued(line)]
    if len(kept) < len(lines) - 1:
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(lines[:1] + kept))
        os.replace(partial, path)


@contextlib.contextmanager
def writing(path):
    """Names `path` in an OSError raised while it is written: h5py and zipfile name their temporary file, or none."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise OSError(f"{error} (writing {path})") from error
        raise OSError(error.errno, f"{error.strerror} (writing {path})") from error


def _on_disk(path) -> None:
    """Flushes a written file to the disk, so that a rename after it never names a file the disk holds half of."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


class RunBackup(keras.callbacks.Callback):
    """The training state (weights and optimizer) at each epoch end, to continue an interrupted run.

    Keras's `BackupAndRestore` rewrites `latest.weights.h5` in place, so a
    process killed during the write leaves a truncated file that cannot be
    resumed. Here epoch N is written to `.partial.epoch-N.weights.h5`,
    flushed to disk and renamed `epoch-N.weights.h5`; then the manifest
    `backup.json` (the epoch, file, size and SHA-256 of this backup and the
    one before) is written the same way, last. Only then is an older file
    removed: a whole backup is on disk at every moment.

    Args:
        backup: The backup folder.
        start: The backup to continue from, as `usable_backup` chose it
            (None: the run starts at epoch 0).
    """

    def __init__(self, backup, start=None):
        super().__init__()
        self.backup, self.start = Path(backup), start
        self.kept = [entry for entry in _backups(backup) if start is not None and "bytes" in entry]

    def on_train_begin(self, logs=None):
        if self.start is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables are in the file
        try:
            self.model.load_weights(self.start)
        except Exception as error:  # h5py and Keras raise OSError, ValueError... for a file they cannot read
            raise ValueError(f"the backup {self.start} could not be loaded: {error}") from error

    def on_epoch_end(self, epoch, logs=None):
        self.backup.mkdir(exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        partial = self.backup / f".partial.{name}"
        with writing(self.backup / name):
            self.model.save_weights(partial, overwrite=True)
            _on_disk(partial)
        entry = {"epoch": epoch + 1, "file": name, "bytes": partial.stat().st_size, "sha256": _sha256(partial)}
        os.replace(partial, self.backup / name)
        self.kept = [entry, *[kept for kept in self.kept if kept["file"] != name][:1]]
        write_json(self.backup / MANIFEST, {"epoch": epoch + 1, "backups": self.kept})
        files = {kept["file"] for kept in self.kept}
        for path in [*self.backup.glob("*.weights.h5"), self.backup / "training_metadata.json"]:
            if path.name not in files:
                path.unlink(missing_ok=True)


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
        self.restart = False
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
    def claimed(self, decide):
        """Decides how a command uses this folder, then holds its lock while the block runs the command.

        `decide` (the command's `prepare` and checks, which write nothing)
        runs first, so a refused command leaves the disk as it was; a
        command already holding the lock is named before that. `decide` runs
        again under the lock if the folder changed in between (another
        command wrote it). The block gets what `decide` returned.

        Raises:
            RunFolderInUse: another process holds the lock.
        """
        self._refuse_if_locked()
        state = self._state()
        decided = decide()
        with self.locked():
            if self._state() != state:
                decided = decide()
            yield decided

    def _state(self):
        file = self.path / "status.json"
        return file.read_bytes() if file.exists() else None

    def _lock_file(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def _refuse_if_locked(self) -> None:
        """Refuses the command if another holds the lock, creating nothing."""
        with contextlib.suppress(FileNotFoundError):
            descriptor = os.open(self._lock_file(), os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderInUse(self._in_use(descriptor)) from None
            finally:
                os.close(descriptor)

    def _in_use(self, descriptor) -> str:
        holder = _read_lock(descriptor)
        return f"{self.path} is in use by another command ({holder}); wait for it to end, or give another --name."

    @contextlib.contextmanager
    def locked(self):
        """Holds the run folder's lock while the block runs: one command writes a run folder at a time.

        The lock is `fcntl.flock` on `.<name>.lock` beside the folder (the
        folder itself is replaced when a run starts again). The kernel
        releases it when its process ends, killed or not; the file holds the
        holder's pid, start time and command, for the message of a command
        refused. A lock file that no process holds (its command was killed)
        is taken over, and stderr says so.

        Raises:
            RunFolderInUse: another process holds the lock.
        """
        lock = self._lock_file()
        created = not lock.parent.exists()
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                message = self._in_use(descriptor)
                os.close(descriptor)
                raise RunFolderInUse(message) from None
            # Its holder removes the file as it ends: a lock taken on a removed file is taken again on the new one.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
                    break
            os.close(descriptor)
        try:
            if os.fstat(descriptor).st_size:
                holder = _read_lock(descriptor)
                notice(f"{self.path} was locked by a command that ended without unlocking it ({holder}); taking it over.")
            started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            record = json.dumps({"pid": os.getpid(), "started": started, "command": " ".join(["rkd-keras", *sys.argv[1:]])})
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, record.encode(), 0)
            yield
        finally:
            lock.unlink(missing_ok=True)
            os.close(descriptor)
            if created:
                with contextlib.suppress(OSError):
                    lock.parent.rmdir()  # only if the command wrote nothing there

    def remove_partials(self) -> None:
        """Removes the temporary files of writes that did not finish (`PARTIAL_NAMES`)."""
        if self.path.is_dir():
            for pattern in PARTIAL_NAMES:
                for path in self.path.rglob(pattern):
                    path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def running(self, config: RunConfig | None = None):
        """Writes the settings and marks the run running, then runs the block.

        On an exception it marks the run incomplete (Ctrl-C too), with the
        reason; on an OSError (a full disk, a write refused) failed, after
        removing its temporary files, and raises `RunFailed`: the finished
        epochs and `best.keras` are kept for `--resume`.
        """
        try:
            if self.restart:
                shutil.rmtree(self.path)
                self.restart = False
            self.path.mkdir(parents=True, exist_ok=True)
            self.remove_partials()  # a killed command's
            if config is not None:
                write_json(self.path / "config.json", dataclasses.asdict(config))
            self.set_status("running")
            yield
        except (OSError, RunFailed) as error:
            self.remove_partials()
            marked = self._mark_failed(error)
            if isinstance(error, RunFailed):  # a run of this folder's (the demo's, a comparison's) failed
                raise
            kept = "Its finished epochs and best.keras are kept" if self.has_progress() else "No epoch had finished"
            raise RunFailed(
                f"{self.path} stopped: {error}. {marked} {kept}: free space (or fix the cause) and continue it "
                "with the same command and --resume."
            ) from error
        except BaseException as error:
            self.set_status("incomplete", reason=f"{type(error).__name__}: {error}"[:500])
            raise

    def _mark_failed(self, error) -> str:
        """Marks the run failed, rewriting status.json in place if a new file finds no room; says how it went."""
        status = {"status": "failed", "kind": self.kind, "reason": f"{type(error).__name__}: {error}"[:500]}
        try:
            write_json(self.path / "status.json", status)
        except OSError:
            try:
                with open(self.path / "status.json", "w") as file:
                    file.write(json.dumps(status, indent=2) + "\n")
            except OSError as again:
                return f"Its status.json could not be marked failed either ({again})."
            finally:
                (self.path / ".status.json.partial").unlink(missing_ok=True)
        return "It is marked failed."

    def set_status(self, status, **details):
        write_json(self.path / "status.json", {"status": status, "kind": self.kind, **details})


class RunFolderInUse(FileExistsError):
    """Another command holds the run folder's lock (`RunFolder.locked`)."""


class RunFailed(RuntimeError):
    """A run stopped by a write error (a full disk...): marked failed, resumable; exit status 1, not 2 (not an input)."""


def _read_lock(descriptor) -> str:
    """The holder a lock file names: its pid, start time and command."""
    try:
        record = json.loads(os.pread(descriptor, 4096, 0))
        return f"pid {record['pid']}, started {record['started']}: {record['command']}"
    except (ValueError, KeyError):  # written as this one reads it, or not yet
        return "its pid is not written yet"


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
            with writing(self.path):
                self.network.save(partial)
            os.replace(partial, self.path)
            write_json(self.record, {"epoch": epoch + 1, self.monitor: float(value)})


def read_history(path) -> dict:
    """history.csv as {column: [values]} (CSVLogger rows of every session, resumed ones too)."""
    lines = (Path(path) / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line and not line.startswith("epoch")]
    return {name: [float(row[i]) for row in rows] for i, name in enumerate(header) if name != "epoch"}

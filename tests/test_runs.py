"""Run folders under failure: one writer at a time, a kill -9 in a backup write, a full disk."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from rkd_keras.cli import main, runs
from rkd_keras.retrieval import RetrievalRecall

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--max-train-items", "600", "--max-eval-items", "200", "--width", "4", "--quiet"]
# Three epochs of two steps: a run of about 10 s on 2 loaded cores.
RUN = ["train-teacher", "--epochs", "3", "--steps-per-epoch", "2", *SMALL]


def _python(code, *args, **kwargs):
    """Runs `code` in a new Python with the worktree's rkd_keras (the command line of `rkd-keras`, as a user runs it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kwargs)


def _epochs(run):
    with open(run / "history.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def _partials(folder):
    return sorted(str(path) for pattern in runs.PARTIAL_NAMES for path in Path(folder).rglob(pattern))


def _status(run):
    return json.loads((run / "status.json").read_text())


def test_a_command_on_a_run_folder_in_use_is_refused_naming_the_first_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys):
    holder = _python(
        """
        import sys
        from rkd_keras.cli.runs import RunFolder
        with RunFolder(sys.argv[1]).locked():
            print("locked", flush=True)
            sys.stdin.read()
        """,
        str(tmp_path / "teacher"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        record = json.loads((tmp_path / ".teacher.lock").read_text())
        argv = [*RUN, "--runs-dir", str(tmp_path)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"{tmp_path / 'teacher'} is in use by another command (pid {holder.pid}, started {record['started']}:" in err
        assert "wait for it to end, or give another --name" in err
        assert record["pid"] == holder.pid and record["started"].endswith(" UTC")
        assert sorted(path.name for path in tmp_path.iterdir()) == [".teacher.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # Killed: the kernel released its lock, and its file is left naming it. (A whole command that takes
    # over a killed one's lock: test_a_run_killed_in_its_backup_write_resumes_...)
    assert json.loads((tmp_path / ".teacher.lock").read_text())["pid"] == holder.pid
    with runs.RunFolder(tmp_path / "teacher").locked():
        assert json.loads((tmp_path / ".teacher.lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"was locked by a command that ended without unlocking it (pid {holder.pid}, started {record['started']}" in err
    assert "taking it over" in err
    assert list(tmp_path.iterdir()) == []  # the lock file went with its command


def test_a_released_lock_is_taken_by_the_next_command_and_refuses_while_held_in_the_same_process(tmp_path):
    folder = runs.RunFolder(tmp_path / "runs" / "x")
    with folder.locked():
        with pytest.raises(runs.RunFolderInUse, match=f"in use by another command \\(pid {os.getpid()}, started "):
            with runs.RunFolder(tmp_path / "runs" / "x").locked():
                pass
    assert not (tmp_path / "runs").exists()  # its folder of runs made for the lock alone is removed too
    with folder.locked():
        assert json.loads((tmp_path / "runs" / ".x.lock").read_text())["pid"] == os.getpid()


KILLED_IN_THE_SECOND_BACKUP = """
    import os, signal, sys
    import keras
    from rkd_keras.cli import main

    save_weights = keras.Model.save_weights

    def killed_while_writing(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if "epoch-2" in str(filepath):
            # Half the file is on disk when the process is killed: as a kill -9 in the middle of the write.
            os.truncate(filepath, os.path.getsize(filepath) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = killed_while_writing
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_killed_in_its_backup_write_resumes_with_the_history_of_an_uninterrupted_run(tmp_path, capsys):
    # batch_hard: the distance-weighted sampling draws from an unsaved random state (README: resumed, other negatives).
    argv = [*RUN, "--sampling", "batch_hard", "--runs-dir", str(tmp_path)]
    killed = _python(KILLED_IN_THE_SECOND_BACKUP, *argv, stderr=subprocess.PIPE, text=True)
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err
    run, backup = tmp_path / "teacher", tmp_path / "teacher" / "backup"
    # Epoch 2 was logged, and its backup half written under its temporary name; epoch 1's is whole.
    assert _epochs(run) == ["0", "1"] and _status(run)["status"] == "running"
    assert sorted(path.name for path in backup.iterdir()) == [".partial.epoch-2.weights.h5", "backup.json", "epoch-1.weights.h5"]
    assert runs.usable_backup(backup) == (1, backup / "epoch-1.weights.h5")

    assert main([*argv, "--resume"]) == 0
    assert "ended without unlocking it" in capsys.readouterr().err  # the killed command's lock
    assert main([*argv, "--name", "uninterrupted"]) == 0
    resumed, uninterrupted = runs.read_history(run), runs.read_history(tmp_path / "uninterrupted")
    assert _epochs(run) == _epochs(tmp_path / "uninterrupted") == ["0", "1", "2"]
    assert resumed.keys() == uninterrupted.keys()
    for column in resumed:  # float32 training on the CPU, the same batches: equal to rounding
        np.testing.assert_allclose(resumed[column], uninterrupted[column], rtol=1e-4, atol=1e-6, err_msg=column)
    assert _status(run)["status"] == "complete" and not backup.exists() and _partials(tmp_path) == []


def test_a_truncated_backup_is_named_and_the_resumed_run_falls_back_to_the_one_before(tmp_path, capsys, monkeypatch):
    begun = []

    def stopped_in_epoch_three(self, epoch, logs=None):
        begun.append(epoch)
        if epoch == 2 and begun.count(2) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RetrievalRecall, "on_epoch_begin", stopped_in_epoch_three)
    argv = [*RUN, "--runs-dir", str(tmp_path)]
    assert main(argv) == 130
    backup = tmp_path / "teacher" / "backup"
    latest = backup / "epoch-2.weights.h5"
    size = latest.stat().st_size
    os.truncate(latest, size // 2)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"the backup of epoch 2, {latest}, is truncated ({size // 2} of its {size} bytes)" in err
    assert f"resuming from the backup of epoch 1, {backup / 'epoch-1.weights.h5'}" in err
    assert begun == [0, 1, 2, 1, 2]  # epoch 2 trained again from epoch 1's state
    assert _epochs(tmp_path / "teacher") == ["0", "1", "2"]  # its first row is not kept twice


def test_a_run_whose_backups_are_all_damaged_is_refused_naming_them(tmp_path):
    backup = tmp_path / "teacher" / "backup"
    backup.mkdir(parents=True)
    (backup / "epoch-2.weights.h5").write_bytes(b"x" * 10)
    entries = [{"epoch": 2, "file": "epoch-2.weights.h5", "bytes": 10, "sha256": "0" * 64},
               {"epoch": 1, "file": "epoch-1.weights.h5", "bytes": 10, "sha256": "0" * 64}]
    runs.write_json(backup / runs.MANIFEST, {"epoch": 2, "backups": entries})
    with pytest.raises(ValueError) as refused:
        runs.usable_backup(backup)
    message = str(refused.value)
    assert f"the backup of epoch 2, {backup / 'epoch-2.weights.h5'}, is damaged (its SHA-256" in message
    assert f"the backup of epoch 1, {backup / 'epoch-1.weights.h5'}, is missing" in message
    assert "no earlier backup is whole" in message and "give --name" in message


def _enospc_in_the_second_backup(monkeypatch):
    """save_weights writes half of epoch 2's backup and raises ENOSPC, as h5py on a full disk."""
    save_weights = keras.Model.save_weights

    def full_disk(self, filepath, *args, **kwargs):
        if "epoch-2" in str(filepath):
            Path(filepath).write_bytes(b"\x89HDF\r\n" + bytes(1000))
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        save_weights(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    return save_weights


def test_a_full_disk_ends_the_run_with_one_message_exit_1_marked_failed_and_resumable(tmp_path, capsys, monkeypatch):
    scores = {0: 0.9, 1: 0.5, 2: 0.4}  # epoch 1 is the best: its best.keras must survive
    monkeypatch.setattr(RetrievalRecall, "on_epoch_end", lambda self, epoch, logs=None: logs.update(val_recall_at_1=scores[epoch]))
    save_weights = _enospc_in_the_second_backup(monkeypatch)
    argv = [*RUN, "--runs-dir", str(tmp_path)]
    run = tmp_path / "teacher"
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    backup = run / "backup" / "epoch-2.weights.h5"
    assert err.startswith(f"rkd-keras train-teacher: error: {run} stopped: [Errno 28] No space left on device (writing {backup}). ")
    assert "It is marked failed. Its finished epochs and best.keras are kept" in err and "--resume" in err
    status = _status(run)
    assert status["status"] == "failed" and status["reason"].startswith("OSError: [Errno 28] No space left on device")
    assert _partials(tmp_path) == []
    assert json.loads((run / "best.json").read_text())["epoch"] == 1
    best = (run / "best.keras").read_bytes()
    keras.models.load_model(run / "best.keras")

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)  # space is freed
    assert main([*argv, "--resume"]) == 0
    assert _epochs(run) == ["0", "1", "2"] and _status(run)["status"] == "complete"
    assert (run / "best.keras").read_bytes() == best
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 1


def test_a_full_disk_that_leaves_no_room_for_status_json_rewrites_it_in_place(tmp_path, monkeypatch):
    folder = runs.RunFolder(tmp_path / "teacher")
    write_json = runs.write_json
    with pytest.raises(runs.RunFailed, match="It is marked failed. No epoch had finished"):
        with folder.running():
            def full(path, value):
                Path(path).with_name(f".{Path(path).name}.partial").write_text("{")
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(runs, "write_json", full)
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runs, "write_json", write_json)
    assert _status(folder.path)["status"] == "failed" and _partials(tmp_path) == []


FILLED_AFTER_THE_FIRST_EPOCH = """
    import sys
    from pathlib import Path

    sys.argv[0] = "rkd-keras"  # as the console script: importing rkd_keras loads no TensorFlow yet
    from rkd_keras.cli import _tensorflow_start_up_hidden, main

    with _tensorflow_start_up_hidden():  # as the command line imports TensorFlow: stderr holds its messages alone
        from rkd_keras.retrieval import RetrievalRecall

    scores = {0: 0.5, 1: 0.9, 2: 0.3}  # epoch 2 is the best: its best.keras is written on the full disk

    def full_after_the_first_epoch(self, epoch, logs=None):
        logs["val_recall_at_1"] = scores[epoch]
        if epoch == 1 and "--resume" not in sys.argv:
            with open(Path(sys.argv[-1]) / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(bytes(2**16))
                        filler.flush()
                except OSError:
                    pass

    RetrievalRecall.on_epoch_end = full_after_the_first_epoch
    sys.exit(main(sys.argv[1:-1]))
"""


@pytest.mark.slow
def test_a_real_full_disk_ends_the_run_with_one_message_and_it_resumes_once_space_is_freed(tmp_path):
    """A 16 MiB tmpfs, mounted in a mount namespace of its own (gone with it), that fills in the second epoch."""
    (tmp_path / "run.py").write_text(textwrap.dedent(FILLED_AFTER_THE_FIRST_EPOCH))
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    command = f"{sys.executable} {tmp_path / 'run.py'} {' '.join(RUN)} --sampling batch_hard --runs-dir {disk}/runs"
    script = f"""
        set -u
        mount -t tmpfs -o size=16m tmpfs {disk}
        {command} {disk} 2> {out}/first.err; echo $? > {out}/first.code
        cp -a {disk}/runs {out}/failed
        rm {disk}/filler
        {command} --resume {disk} 2> {out}/second.err; echo $? > {out}/second.code
        cp -a {disk}/runs {out}/resumed
    """
    # A mount needs root: as root, a mount namespace; otherwise a user namespace maps the user to root in it.
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]
    env = {**{key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*namespace, "bash", "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0 and (out / "second.code").exists(), done.stderr
    err = (out / "first.err").read_text().strip()
    assert (out / "first.code").read_text().strip() == "1", err
    assert len(err.splitlines()) == 1, err
    run = out / "failed" / "teacher"
    assert f"{disk}/runs/teacher stopped: [Errno 28] No space left on device (writing {disk}/runs/teacher/best.keras)" in err
    assert "--resume" in err
    status = _status(run)
    assert status["status"] == "failed" and "No space left on device" in status["reason"]
    assert _partials(out / "failed") == []
    assert json.loads((run / "best.json").read_text())["epoch"] == 1  # epoch 2's could not be written
    keras.models.load_model(run / "best.keras")  # epoch 1's, whole

    second = (out / "second.err").read_text()
    assert (out / "second.code").read_text().strip() == "0", second
    resumed = out / "resumed" / "teacher"
    assert _epochs(resumed) == ["0", "1", "2"] and _status(resumed)["status"] == "complete"
    assert json.loads((resumed / "metrics.json").read_text())["epoch"] == 2

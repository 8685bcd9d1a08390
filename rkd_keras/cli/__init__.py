"""`rkd-keras`: train a teacher, embed with it, distil a student, evaluate, tune, export, and the demo.

The command line is apart from the library: it uses all of it, and nothing in
the library imports it. It parses its flags and checks its settings and files
before TensorFlow is imported, so `--help` and mistakes return at once:

- `parser`: the flags; `config`: the run settings and their checks;
  `inputs`: each command's inputs, checked before the library loads;
- `runs`: run folders (start, restart, resume) and the best checkpoint;
- `training`: one run's data, models, training and evaluation;
- `commands`: the commands; `report`: tables and pictures.

Every training run writes a folder `runs/<name>/` (see `rkd_keras.cli.runs`).
"""

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile

from rkd_keras.cli.config import RunConfig, field_kind
from rkd_keras.cli.inputs import check_inputs
from rkd_keras.cli.parser import PROG, build_parser

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Keras wraps an error inside a layer call in this frame; the cause is its second paragraph.
_KERAS_CALL = re.compile(r"Exception encountered when calling [^\n]*\n\n(.*?)(\n\nArguments received by .*)?$", re.S)
# A flag in a message, with the value it is shown with.
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: (none|PATH|FOLDER))?")
# A Python argument in a library message: `download=True`, `manual_dir=FOLDER`.
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)=([^`]*)`")


def one_line(error: BaseException) -> str:
    """The error's message on one line, without terminal colour codes or Keras's call frame."""
    text = _KERAS_CALL.sub(r"\1", _ANSI.sub("", str(error)))
    return " ".join(text.split())


def _flag_words(message: str) -> str:
    """`message` as the command line reads: a library argument that is a run setting becomes its flag.

    The library's messages name its Python arguments (`download=True`,
    `manual_dir=FOLDER`), which a command-line user cannot give; they become
    `--download` and `--manual-dir FOLDER`. Other arguments stay as they are.
    """
    fields = {field.name: field for field in dataclasses.fields(RunConfig) if field.metadata.get("flag", True)}

    def flag(match):
        name, value = match[1], match[2]
        if name not in fields:
            return match[0]
        spelled = "--" + name.replace("_", "-")
        if field_kind(fields[name])[0] is bool and value in ("True", "False"):
            return spelled if value == "True" else f"--no-{spelled[2:]}"
        shown = {"": "", "None": " none"}.get(value, f" {value}")
        return spelled + shown

    return _ARGUMENT.sub(flag, message)


def _compare_words(message: str, args) -> str:
    """`message` as `compare` reads: a run-settings flag it does not have becomes the --config key.

    The checks every command shares name the flags of the single-run
    commands (`--weights none`, `--download`); compare takes those settings
    from its --config file only.
    """
    fields = {field.name: field for field in dataclasses.fields(RunConfig)}

    def key(match):
        name, value = match[1].replace("-", "_"), match[2]
        if name not in fields or hasattr(args, name):  # not a run setting, or one of compare's own flags
            return match[0]
        if value is None and field_kind(fields[name])[0] is bool:
            value = "true"
        shown = {None: "", "none": ": null"}.get(value, f": {value}")
        return f"the --config key {name}{shown}"

    return _FLAG.sub(key, message)


@contextlib.contextmanager
def _tensorflow_start_up_hidden():
    """Keeps TensorFlow's start-up logs off the terminal while the library is imported.

    `TF_CPP_MIN_LOG_LEVEL=3` hides its C++ log lines (a CUDA "error" on a
    machine without a GPU among them), but the lines printed while its
    libraries load, before its logging starts, go straight to file
    descriptor 2: those are held back, and shown only if the import fails.
    TensorFlow's Python warnings (e.g. about retracing) are turned off too.
    A user who sets TF_CPP_MIN_LOG_LEVEL sees everything.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    sys.stderr.flush()
    terminal = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(terminal, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(terminal, 2)
            os.close(terminal)


def _use_tensorflow() -> None:
    """Runs the command line on TensorFlow, whose `tf.data` pipelines, metrics and export it uses.

    It is tested on TensorFlow only: an explicit other `KERAS_BACKEND` is
    refused, and a backend chosen in `~/.keras/keras.json` is overridden.
    """
    chosen = os.environ.get("KERAS_BACKEND", "tensorflow")
    if chosen != "tensorflow":
        raise ValueError(
            f"the command line runs on the TensorFlow backend, but KERAS_BACKEND={chosen}: run rkd-keras "
            "without it (or with KERAS_BACKEND=tensorflow), and use JAX or PyTorch from Python (docs/scaling.md: Backends)"
        )
    os.environ["KERAS_BACKEND"] = "tensorflow"


def _refuse(command, error, args) -> None:
    """Prints the error as the one line of a refused command."""
    message = _flag_words(one_line(error))
    if args.command == "compare":
        message = _compare_words(message, args)
    print(f"{command}: error: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Runs `rkd-keras` with `argv` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    command = f"{PROG} {args.command}"
    try:
        _use_tensorflow()
        inputs = check_inputs(args)
        with _tensorflow_start_up_hidden():
            from rkd_keras.cli import commands
    except (ValueError, OSError) as error:
        _refuse(command, error, args)
        return 2
    try:
        commands.run(args, inputs)
    except commands.EXPECTED_ERRORS as error:
        _refuse(command, error, args)
        return 2
    except (commands.ArtifactMismatch, commands.RunFailed) as error:
        print(f"{command}: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\n{command}: interrupted; the run folder is marked incomplete. "
            "Continue it with the same command and --resume.",
            file=sys.stderr,
        )
        return 130
    return 0

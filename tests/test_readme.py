"""The README's Python examples run on each backend the README says they run on (tests/readme_examples.py).

Slow (about a minute per backend on 2 idle cores): CI runs them after the suite (`pytest -m slow`). The
README's several-machines JAX example runs in `tests/test_multiprocess_jax.py`, on two processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import readme_examples

HERE = Path(__file__).parent
README = HERE.parent / "README.md"


def test_every_python_example_of_the_readme_is_run_or_named_here():
    blocks = readme_examples.python_blocks(README.read_text())
    covered = [block for block in blocks if any(example["anchor"] in block for example in readme_examples.EXAMPLES)]
    # The one left: the several-machines JAX example (initialize on two processes), run by test_multiprocess_jax.
    others = [block for block in blocks if block not in covered]
    assert len(others) == 1 and "keras.distribution.initialize(" in others[0], others
    assert len(covered) == len(readme_examples.EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("backend", readme_examples.ALL)
def test_the_readme_examples_run(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.run(
        [sys.executable, str(HERE / "readme_examples.py"), str(README), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    expected = [example["anchor"] for example in readme_examples.EXAMPLES if backend in example["backends"]]
    assert report["backend"] == backend and list(report["results"]) == expected
    failed = {anchor: trace for anchor, trace in report["results"].items() if trace != "ok"}
    assert not failed, "\n\n".join(f"{anchor}:\n{trace}" for anchor, trace in failed.items())

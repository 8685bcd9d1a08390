"""The Python examples of the README, the docs site and the docstrings run on each backend their page names.

tests/readme_examples.py runs them. Slow (about a minute per backend on 2 idle cores): CI runs them after
the suite (`pytest -m slow`). The several-machines JAX example (docs/scaling.md) runs in
`tests/test_multiprocess_jax.py`, on two processes.
"""

import json
import os
import subprocess
import sys

import pytest

import readme_examples

ROOT = readme_examples.ROOT


# The one example run elsewhere: the several-machines JAX example (initialize on two processes), by
# tests/test_multiprocess_jax.py.
RUN_ELSEWHERE = {"anchor": "keras.distribution.initialize(", "page": "docs/scaling.md", "shrink": []}


def test_every_python_example_of_the_readme_the_docs_and_the_docstrings_is_run_or_named_here():
    blocks = {page: readme_examples.python_blocks((ROOT / page).read_text()) for page in readme_examples.sources()}
    assert {"README.md", "docs/index.md", "docs/terms.md", "docs/scaling.md", "docs/serving.md"} <= set(blocks)
    assert {"rkd_keras/distiller.py", "rkd_keras/export.py", "rkd_keras/retrieval.py"} <= set(blocks)
    examples = [*readme_examples.EXAMPLES, RUN_ELSEWHERE]
    others = [(page, block) for page, page_blocks in blocks.items() for block in page_blocks
              if not any(example["anchor"] in block for example in examples)]
    assert not others, others
    for example in examples:
        # On its own page exactly once; on another page only as the same code (a copy that cannot drift).
        code = readme_examples.example_code(blocks[example["page"]], example)
        copies = [block for page_blocks in blocks.values() for block in page_blocks if example["anchor"] in block]
        assert all(readme_examples.example_code([copy], example) == code for copy in copies), example["anchor"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", readme_examples.ALL)
def test_the_readme_and_docs_examples_run(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "readme_examples.py"), str(ROOT), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    expected = [example["anchor"] for example in readme_examples.EXAMPLES if backend in example["backends"]]
    assert report["backend"] == backend and list(report["results"]) == expected
    failed = {anchor: trace for anchor, trace in report["results"].items() if trace != "ok"}
    assert not failed, "\n\n".join(f"{anchor}:\n{trace}" for anchor, trace in failed.items())

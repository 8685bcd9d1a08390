"""Nothing in the library loads code from data: no pickle, no unsafe Keras or YAML loading."""

import re
from pathlib import Path

import pytest

import rkd_keras

PACKAGE = Path(rkd_keras.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE = {
    "safe_mode=False": r"safe_mode\s*=\s*False",
    "pickle": r"\bpickle\b|\bdill\b|cloudpickle",
    "yaml.load / unsafe YAML loaders": r"yaml\.(load|unsafe_load|full_load)\s*\(|Loader\s*=",
    # A loader the package defines or uses must be yaml's SafeLoader or a subclass of it.
    "YAML loaders other than SafeLoader": r"yaml\.(?!C?SafeLoader\b)\w*Loader\b",
    "eval / exec of text": r"(?<![\w.])(eval|exec)\s*\(",
    "shell commands": r"os\.system|subprocess|shell\s*=\s*True",
    "numpy object arrays from files": r"allow_pickle\s*=\s*True",
}


def test_the_package_has_sources_to_check():
    assert {"cli/config.py", "cli/runs.py", "distiller.py", "export.py"} <= {str(path.relative_to(PACKAGE)) for path in SOURCES}


@pytest.mark.parametrize("pattern", UNSAFE, ids=list(UNSAFE))
def test_no_unsafe_loading_in_the_package(pattern):
    hits = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(UNSAFE[pattern], line)
    ]
    assert not hits, hits

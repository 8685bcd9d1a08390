"""Every `>>>` example in the docstrings of rkd_keras.losses, and of every module the docs site renders, runs
and prints what it says."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import rkd_keras.losses

MODULES = ["rkd_keras.losses"] + [
    f"rkd_keras.losses.{module.name}" for module in pkgutil.iter_modules(rkd_keras.losses.__path__)
]


def test_docstring_examples_run():
    """The runner prints each failing example with what it expected and what it got."""
    attempted = {}
    for name in MODULES:
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        finder = doctest.DocTestFinder()
        for test in finder.find(importlib.import_module(name), extraglobs={"np": np, "keras": keras, "tf": tf}):
            runner.run(test)
        results = runner.summarize(verbose=False)
        assert results.failed == 0, name
        attempted[name] = results.attempted
    # Every module with public functions or classes shows them in use (base holds internal helpers).
    assert all(count > 0 for name, count in attempted.items() if name != "rkd_keras.losses.base"), attempted


def _module_of(path):
    """The module that holds the object `path` names: its longest importable prefix."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:n])).__name__
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(path)


def test_the_api_references_docstring_examples_run():
    """Every module whose docstrings the docs site renders (a `::: rkd_keras.x.Name` line) runs its `>>>` lines."""
    rendered = set()
    for page in (Path(__file__).parents[1] / "docs").glob("*.md"):
        for path in re.findall(r"(?m)^::: (rkd_keras\S*)$", page.read_text()):
            rendered.add(_module_of(path))
    attempted = {}
    for name in sorted(rendered - set(MODULES)):
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder().find(importlib.import_module(name), extraglobs={"np": np, "keras": keras, "tf": tf}):
            runner.run(test)
        results = runner.summarize(verbose=False)
        assert results.failed == 0, name
        attempted[name] = results.attempted
    assert {"rkd_keras.data", "rkd_keras.models", "rkd_keras.presets", "rkd_keras.retrieval", "rkd_keras.terms"} <= {
        name for name, count in attempted.items() if count > 0
    }, attempted

"""Every `>>>` example in the docstrings of rkd_keras.losses runs and prints what it says."""

import doctest
import importlib
import pkgutil

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

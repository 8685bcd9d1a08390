"""Every `>>>` example in the docstrings of rkd_keras.losses runs and prints what it says."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import rkd_keras.losses

MODULES = ["rkd_keras.losses"] + [
    f"rkd_keras.losses.{module.name}" for module in pkgutil.iter_modules(rkd_keras.losses.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, extraglobs={"np": np, "keras": keras, "tf": tf}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
    if name != "rkd_keras.losses.base":  # private helpers without examples
        assert results.attempted > 0

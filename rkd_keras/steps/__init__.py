"""One module per backend with the Distiller's `train_step` and `test_step`, as Keras picks one `Trainer` per backend.

Each module holds a mixin (`TensorFlowSteps`, `JaxSteps`, `TorchSteps`) with
that backend's steps and its finite check (`checked_finite`); `Distiller`
inherits the running backend's, chosen once when `rkd_keras.distiller` is
imported. Only that backend's module is imported: on JAX or PyTorch the
Distiller imports nothing of TensorFlow (a GPU machine may have none).
Mixins rather than functions: the steps call the Distiller's own methods
(`_checked_batch`, `_student_terms`, `_update_metrics`), which functions would
have to import back from `rkd_keras.distiller`.
"""

import importlib

import keras

# Backend → (module, mixin).
_STEPS = {
    "tensorflow": ("rkd_keras.steps.tensorflow", "TensorFlowSteps"),
    "jax": ("rkd_keras.steps.jax", "JaxSteps"),
    "torch": ("rkd_keras.steps.torch", "TorchSteps"),
}


def for_backend(backend=None):
    """The steps mixin of `backend` (default: Keras's running backend)."""
    backend = backend or keras.backend.backend()
    if backend not in _STEPS:
        raise ValueError(f"rkd_keras's Distiller runs on {', '.join(_STEPS)}; Keras's backend is {backend!r}.")
    module, name = _STEPS[backend]
    return getattr(importlib.import_module(module), name)

"""Serve a distilled student: export it alone as a TensorFlow SavedModel."""

import shutil
import uuid
from pathlib import Path

import keras
import tensorflow as tf

from rkd_keras.checks import check_savedmodel_destination


def export_student(model_or_distiller, path, *, input_signature=None, overwrite: bool = False) -> Path:
    """Exports the student alone as a TF SavedModel with a `serve` endpoint.

    A `Distiller` is exported without its teacher. The batch dimension of the
    signature is `None`, so any batch size can be served. The destination is
    checked first (`rkd_keras.checks.check_savedmodel_destination`); the SavedModel is written to a
    temporary folder beside `path` and renamed when complete, so a failure
    leaves nothing at `path`, and an old SavedModel there is replaced only
    once the new one is complete.

    Args:
        model_or_distiller: The student model, or a `Distiller` holding it.
        path: Folder to create; its parent folder must exist.
        input_signature: List of `tf.TensorSpec`; inferred from a functional
            model's inputs, required for a subclassed one.
        overwrite: Replace an existing SavedModel at `path` (never anything
            else).

    Returns:
        The path of the SavedModel.

    Example:
    ```python
    export_student(distiller, "student_savedmodel")
    loaded = tf.saved_model.load("student_savedmodel")  # keep it referenced
    embeddings = loaded.serve(images)
    ```
    """
    model = getattr(model_or_distiller, "student", model_or_distiller)
    if keras.backend.backend() == "torch":
        # Keras exports a PyTorch model to a SavedModel only through torch_xla.
        raise NotImplementedError(
            "export_student writes a TensorFlow SavedModel, which Keras cannot make from the PyTorch backend "
            "here. Save the model (`model.save('student.keras')`; a saved Distiller works too) and export it "
            "in a TensorFlow-backend process: KERAS_BACKEND=tensorflow python -c \"import keras, rkd_keras; "
            "rkd_keras.export_student(keras.models.load_model('student.keras'), 'student_savedmodel')\"."
        )
    path = check_savedmodel_destination(path, overwrite=overwrite)
    if input_signature is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(
                f"Cannot infer the input signature of {model.name!r} (a subclassed model); pass "
                "input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32)]."
            )
        input_signature = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in inputs]
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        model.export(str(staging), format="tf_saved_model", input_signature=input_signature, verbose=False)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            staging.rename(path)
            shutil.rmtree(old)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_student(path) -> keras.layers.Layer:
    """Loads an exported student as a Keras layer (`keras.layers.TFSMLayer`).

    Example:
    ```python
    embed = load_student("student_savedmodel")
    embeddings = embed(images)
    ```
    """
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path} is not a SavedModel folder (no saved_model.pb).")
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"load_student gives a keras.layers.TFSMLayer, which runs on the TensorFlow backend only (this "
            f"process runs {keras.backend.backend()}). Serve it with TensorFlow directly: "
            f"loaded = tf.saved_model.load({str(path)!r}); loaded.serve(images)."
        )
    return keras.layers.TFSMLayer(str(path), call_endpoint="serve")

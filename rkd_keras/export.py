"""Serve a distilled student: export it alone (SavedModel, ONNX, LiteRT, OpenVINO), check it in its runtime."""

import os
import shutil
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rkd_keras.checks import artifact_files, artifact_format, check_export_destination, check_export_format


# The largest difference a float32 artifact may have from the Keras student, relative to the largest
# output: the runtimes fuse and reorder float32 operations (~2e-7 seen), a changed weight moves it ~1.
EXPORT_TOLERANCE = 1e-4
# A quantized LiteRT student's: its own rounding (float16 2e-4, int8 1.2e-2 seen on a small CNN); what
# quantization costs the task is measured by its Recall@K (the CLI reports it), not by this bound.
QUANTIZED_TOLERANCE = {"float16": 1e-2, "int8": 1e-1}


class ExportMismatchError(ValueError):
    """An exported artifact, run in its own runtime, does not give the student's outputs."""


def _converter_options(quantize, representative_data):
    """LiteRT converter settings (`tf.lite.TFLiteConverter` attributes) for a quantization."""
    if quantize is None:
        return {}
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        return {**options, "target_spec": {"supported_types": [tf.float16]}}
    if representative_data is None:
        raise ValueError(
            "quantize='int8' needs representative_data: an array of typical inputs (e.g. 100-500 training "
            "images), from which the converter sets each tensor's int8 range."
        )
    samples = np.asarray(representative_data, np.float32)

    def representative_dataset():
        for sample in samples:
            yield [sample[None]]

    return {**options, "representative_dataset": representative_dataset}


def export_student(
    model_or_distiller, path, *, format: str = "tf_saved_model", input_signature=None, overwrite: bool = False,
    quantize: str | None = None, representative_data=None,
) -> Path:
    """Exports the student alone, through Keras's `model.export`: a SavedModel, ONNX, LiteRT or OpenVINO artifact.

    A `Distiller` is exported without its teacher. The batch dimension of the
    signature is `None`, so any batch size can be served. The destination is
    checked first (`check_export_destination`); the artifact is written to a
    temporary name beside `path` and renamed when complete, so a failure
    leaves nothing at `path`, and an old artifact there is replaced only once
    the new one is complete (OpenVINO's two files one by one, the `.bin`
    weights before the `.xml` that names the model). Check it with
    `check_export`.

    Args:
        model_or_distiller: The student model, or a `Distiller` holding it.
        path: Folder (SavedModel) or file (`.onnx`, `.tflite`, `.xml`) to
            create; its parent folder must exist. OpenVINO also writes the
            weights beside it (`student.xml` and `student.bin`).
        format: `"tf_saved_model"` (a `serve` endpoint), `"onnx"` (tf2onnx;
            run with onnxruntime), `"litert"` (run with ai-edge-litert) or
            `"openvino"` (float32 IR; run with the OpenVINO runtime). ONNX and
            LiteRT need `pip install 'rkd-keras[export]'`, OpenVINO
            `pip install 'rkd-keras[openvino]'`.
        input_signature: List of `tf.TensorSpec`; inferred from a functional
            model's inputs, required for a subclassed one.
        overwrite: Replace an existing artifact of the same format at `path`
            (never anything else; for OpenVINO, its `.bin` too).
        quantize: LiteRT only: `"float16"` (weights in float16) or `"int8"`
            (weights and activations in int8, float where an op has no int8
            kernel), or `None`.
        representative_data: For `quantize="int8"`: an array of typical
            inputs, e.g. a few hundred training images.

    Returns:
        The path of the artifact.

    Example:
    ```python
    export_student(distiller, "student_savedmodel")
    loaded = tf.saved_model.load("student_savedmodel")  # keep it referenced
    embeddings = loaded.serve(images)
    export_student(distiller, "student.onnx", format="onnx")
    ```
    """
    model = getattr(model_or_distiller, "student", model_or_distiller)
    if keras.backend.backend() == "torch":
        # Keras exports a PyTorch model to a SavedModel only through torch_xla.
        raise NotImplementedError(
            "export_student runs Keras's TensorFlow-based exporters, which Keras cannot use from the PyTorch "
            "backend here. Save the model (`model.save('student.keras')`; a saved Distiller works too) and export it "
            "in a TensorFlow-backend process: KERAS_BACKEND=tensorflow python -c \"import keras, rkd_keras; "
            "rkd_keras.export_student(keras.models.load_model('student.keras'), 'student_savedmodel')\"."
        )
    check_export_format(format, quantize)
    options = _converter_options(quantize, representative_data)
    path = check_export_destination(path, format, overwrite=overwrite)
    if input_signature is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(
                f"Cannot infer the input signature of {model.name!r} (a subclassed model); pass "
                "input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32)]."
            )
        input_signature = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in inputs]
    # The suffix stays last, in lower case: Keras's LiteRT and OpenVINO exporters require ".tflite", ".xml".
    suffix = path.suffix.lower() if format != "tf_saved_model" else path.suffix
    staging = path.parent / f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        model.export(str(staging), format=format, input_signature=input_signature, verbose=False, **options)
        if format != "tf_saved_model":
            # Each rename is atomic: an old file stays whole until the new one replaces it. The file named
            # `path` comes last, so an artifact is only found there once its other files are in place.
            for written, final in reversed(list(zip(artifact_files(staging, format), artifact_files(path, format)))):
                os.replace(written, final)
        elif path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            staging.rename(path)
            shutil.rmtree(old)
        else:
            staging.rename(path)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for written in artifact_files(staging, format):
                written.unlink(missing_ok=True)
    return path


def run_artifact(path, inputs) -> np.ndarray:
    """The outputs of an exported student on `inputs` (a float32 array), run in its format's own runtime."""
    path = Path(path)
    format = artifact_format(path)
    inputs = np.asarray(inputs, np.float32)
    if format == "tf_saved_model":
        loaded = tf.saved_model.load(str(path))
        return np.asarray(loaded.serve(tf.constant(inputs)))
    check_export_format(format)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: inputs})[0])
    if format == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU")  # reads the .bin beside the .xml
        return np.asarray(compiled(inputs)[compiled.output(0)], np.float32)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], inputs.astype(given["dtype"]))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.float32)


def check_export(model_or_distiller, path, inputs=None, *, rtol: float = EXPORT_TOLERANCE, seed: int = 0) -> dict:
    """Runs an exported student in its own runtime and compares it with the Keras student.

    Args:
        model_or_distiller: The student (or its `Distiller`) that was exported.
        path: The artifact (`export_student`'s result).
        inputs: A float32 batch of the student's inputs, e.g. test images;
            `None`: 16 seeded uniform [0, 255] images of the model's input shape.
        rtol: The largest allowed difference, relative to the largest absolute
            output of the student (`EXPORT_TOLERANCE`: float32 runtimes).
        seed: Seed of the random inputs.

    Returns:
        `{"format", "items", "max_abs_difference", "relative_difference"}`.

    Raises:
        ExportMismatchError: the relative difference exceeds `rtol`.
    """
    model = getattr(model_or_distiller, "student", model_or_distiller)
    if inputs is None:
        shape = tuple(model.inputs[0].shape[1:])
        if any(size is None for size in shape):
            raise ValueError(f"{model.name!r} takes inputs of shape {shape}: pass inputs= to check its export.")
        inputs = np.random.default_rng(seed).uniform(0, 255, (16, *shape))
    inputs = np.asarray(inputs, np.float32)
    expected = np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)), np.float64)
    actual = run_artifact(path, inputs).astype(np.float64)
    if actual.shape != expected.shape:
        raise ExportMismatchError(f"{path} gives outputs of shape {actual.shape}, the student {expected.shape}.")
    difference = float(np.max(np.abs(actual - expected)))
    relative = difference / max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    result = {"format": artifact_format(path), "items": int(len(inputs)), "max_abs_difference": difference,
              "relative_difference": relative}
    if not relative <= rtol:  # NaN fails too
        raise ExportMismatchError(
            f"{path} does not give the student's outputs: their largest difference is {difference:.3g}, "
            f"{relative:.3g} of the largest output, above the tolerance {rtol:g}."
        )
    return result


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

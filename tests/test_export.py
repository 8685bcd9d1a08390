"""Export of the student alone (SavedModel, ONNX, LiteRT, OpenVINO), each read back in its own runtime."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from rkd_keras import Distiller, embedding_model
from rkd_keras.export import ExportMismatchError, check_export, export_student, load_student

READ_BACK = """
import sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])  # keep a reference: it owns the variables
for batch in (1, 7):
    images = np.load(sys.argv[2])[:batch]
    np.save(f"{sys.argv[3]}_{batch}.npy", loaded.serve(tf.constant(images)).numpy())
assert "rkd_keras" not in sys.modules
"""


def _folder_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.fixture
def distiller():
    teacher = embedding_model("small_cnn", 64, input_shape=(16, 16, 1), width=32, name="teacher")
    student = embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=4, l2_normalize=False, name="student")
    return Distiller(teacher, student)


def test_exported_student_serves_the_same_embeddings_in_a_tensorflow_only_process(distiller, tmp_path, rng):
    images = rng.uniform(0, 255, size=(7, 16, 16, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    export_student(distiller, tmp_path / "student")
    script = tmp_path / "read_back.py"
    script.write_text(READ_BACK)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "student"), str(tmp_path / "images.npy"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,  # not the repository: rkd_keras is not importable there
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for batch in (1, 7):
        served = np.load(tmp_path / f"out_{batch}.npy")
        expected = distiller.student.predict(images[:batch], verbose=0)
        assert served.shape == (batch, 8)
        assert np.max(np.abs(served - expected)) <= 1e-6


def test_export_holds_the_student_not_the_teacher(distiller, tmp_path):
    assert distiller.teacher.count_params() >= 5 * distiller.student.count_params()
    export_student(distiller, tmp_path / "student")
    export_student(distiller.teacher, tmp_path / "teacher")
    assert _folder_size(tmp_path / "student") * 3 < _folder_size(tmp_path / "teacher")


def test_load_student_returns_a_keras_layer(distiller, tmp_path, rng):
    export_student(distiller, tmp_path / "student")
    images = rng.uniform(0, 255, size=(3, 16, 16, 1)).astype("float32")
    layer = load_student(tmp_path / "student")
    np.testing.assert_allclose(np.asarray(layer(images)), distiller.student.predict(images, verbose=0), atol=1e-6)


def test_existing_savedmodel_is_replaced_only_with_overwrite(distiller, tmp_path):
    export_student(distiller.teacher, tmp_path / "student")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        export_student(distiller, tmp_path / "student")
    export_student(distiller, tmp_path / "student", overwrite=True)
    served = load_student(tmp_path / "student")(np.zeros((2, 16, 16, 1), np.float32))
    assert tuple(served.shape) == (2, 8)  # the student's 8-d embeddings replaced the teacher's 64-d ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_interrupted_export_leaves_nothing(distiller, tmp_path, monkeypatch):
    def broken_export(self, *args, **kwargs):
        Path(args[0]).mkdir()
        (Path(args[0]) / "variables").mkdir()
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        export_student(distiller, tmp_path / "student")
    assert list(tmp_path.iterdir()) == []


def test_subclassed_student_needs_a_signature(tmp_path):
    class Subclassed(keras.Model):
        def call(self, x):
            return x * 2.0

    with pytest.raises(ValueError, match="pass input_signature="):
        export_student(Subclassed(), tmp_path / "student")


def test_a_path_that_is_no_savedmodel_is_refused_as_such_with_or_without_overwrite(distiller, tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 1\n")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError) as error:
            export_student(distiller, tmp_path / "c.yaml", overwrite=overwrite)
        assert "is not a SavedModel folder (no saved_model.pb)" in str(error.value)
        assert "pass overwrite=True" not in str(error.value)
    assert (tmp_path / "c.yaml").read_text() == "epochs: 1\n"


# ONNX and LiteRT (the export extra), OpenVINO (the openvino extra): each artifact runs in its own runtime
# (onnxruntime, the LiteRT interpreter, OpenVINO) and gives the student's embeddings; check_export says how
# close, and refuses what is not.
@pytest.mark.parametrize("format, name, files", [
    ("tf_saved_model", "student", ["student"]), ("onnx", "s.onnx", ["s.onnx"]), ("litert", "s.tflite", ["s.tflite"]),
    ("openvino", "s.xml", ["s.bin", "s.xml"]),
])
def test_every_format_gives_the_students_embeddings_in_its_runtime(distiller, tmp_path, rng, format, name, files):
    from rkd_keras.export import EXPORT_TOLERANCE, run_artifact

    images = rng.uniform(0, 255, size=(9, 16, 16, 1)).astype("float32")
    path = export_student(distiller, tmp_path / name, format=format)
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no staging file left
    served = run_artifact(path, images)
    expected = distiller.student.predict(images, verbose=0)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    result = check_export(distiller, path, images)
    assert result["format"] == format and result["items"] == 9
    assert result["relative_difference"] <= EXPORT_TOLERANCE
    # Another student's weights (a tampered or stale artifact) fail the check.
    other = embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=4, l2_normalize=False, name="other")
    with pytest.raises(ExportMismatchError, match="does not give the student's outputs"):
        check_export(other, path, images)


@pytest.mark.slow  # three LiteRT conversions: ~40 s
def test_quantized_litert_students_are_close_and_smaller(distiller, tmp_path, rng):
    from rkd_keras.export import QUANTIZED_TOLERANCE

    images = rng.uniform(0, 255, size=(32, 16, 16, 1)).astype("float32")
    sizes = {}
    for quantize in (None, "float16", "int8"):
        path = export_student(distiller, tmp_path / f"{quantize}.tflite", format="litert", quantize=quantize,
                              representative_data=images if quantize == "int8" else None)
        sizes[quantize] = path.stat().st_size
        if quantize is not None:
            result = check_export(distiller, path, images, rtol=QUANTIZED_TOLERANCE[quantize])
            assert 0 < result["relative_difference"], quantize  # quantized: not the float32 file again
    assert sizes["int8"] < sizes["float16"] < sizes[None], sizes
    with pytest.raises(ValueError, match="quantize='int8' needs representative_data"):
        export_student(distiller, tmp_path / "x.tflite", format="litert", quantize="int8")
    with pytest.raises(ValueError, match="applies to format='litert' only"):
        export_student(distiller, tmp_path / "x.onnx", format="onnx", quantize="float16")
    assert not (tmp_path / "x.tflite").exists() and not (tmp_path / "x.onnx").exists()


def test_file_formats_refuse_a_wrong_suffix_and_replace_only_their_own_files(distiller, tmp_path):
    with pytest.raises(ValueError, match=r"onnx is written to a \.onnx file, but .*s\.tflite ends in \.tflite"):
        export_student(distiller, tmp_path / "s.tflite", format="onnx")
    (tmp_path / "notes.onnx").write_text("not a model")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is not an ONNX file, so it is not replaced"):
            export_student(distiller, tmp_path / "notes.onnx", format="onnx", overwrite=overwrite)
    assert (tmp_path / "notes.onnx").read_text() == "not a model"
    path = export_student(distiller, tmp_path / "s.onnx", format="onnx")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_student(distiller, path, format="onnx")
    distiller.student.layers[-1].kernel.assign(distiller.student.layers[-1].kernel * 2.0)
    with pytest.raises(ExportMismatchError):  # the file is the student before the change
        check_export(distiller, path)
    export_student(distiller, path, format="onnx", overwrite=True)
    assert check_export(distiller, path)["relative_difference"] <= 1e-4  # replaced by the changed student
    with pytest.raises(ValueError, match="format must be one of tf_saved_model, onnx, litert, openvino, received 'coreml'"):
        export_student(distiller, tmp_path / "s.mlmodel", format="coreml")


# OpenVINO IR is two files, s.xml (the graph) and s.bin (the weights): both are the artifact.
def test_openvino_weights_changed_in_the_bin_fail_the_check(distiller, tmp_path):
    path = export_student(distiller, tmp_path / "s.xml", format="openvino")
    assert check_export(distiller, path)["relative_difference"] <= 1e-4
    kernel = keras.ops.convert_to_numpy(distiller.student.layers[-1].kernel).astype("<f4")
    stored = np.ascontiguousarray(kernel.T)  # the embedding layer's kernel, as OpenVINO's MatMul holds it
    weights = (tmp_path / "s.bin").read_bytes()
    assert weights.count(stored.tobytes()) == 1
    (tmp_path / "s.bin").write_bytes(weights.replace(stored.tobytes(), (stored * 1.5).tobytes()))
    with pytest.raises(ExportMismatchError, match="does not give the student's outputs"):
        check_export(distiller, path)


def test_openvino_export_replaces_both_files_only_with_overwrite(distiller, tmp_path):
    from rkd_keras.export import run_artifact

    export_student(distiller.teacher, tmp_path / "s.xml", format="openvino")
    for existing in ("s.xml", "s.bin"):
        assert (tmp_path / existing).is_file()
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        export_student(distiller, tmp_path / "s.xml", format="openvino")
    assert run_artifact(tmp_path / "s.xml", np.zeros((2, 16, 16, 1), np.float32)).shape == (2, 64)  # kept whole
    export_student(distiller, tmp_path / "s.xml", format="openvino", overwrite=True)
    assert run_artifact(tmp_path / "s.xml", np.zeros((2, 16, 16, 1), np.float32)).shape == (2, 8)  # the student's
    assert check_export(distiller, tmp_path / "s.xml")["relative_difference"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin", "s.xml"]


def test_openvino_export_replaces_no_file_that_is_not_its_own(distiller, tmp_path):
    (tmp_path / "notes.xml").write_text("<notes>mine</notes>\n")
    (tmp_path / "stray.bin").write_bytes(b"mine")  # a .bin with no OpenVINO model beside it
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="notes.xml exists and is not an OpenVINO IR model"):
            export_student(distiller, tmp_path / "notes.xml", format="openvino", overwrite=overwrite)
        with pytest.raises(FileExistsError, match="stray.bin exists and is not the weights of an OpenVINO model"):
            export_student(distiller, tmp_path / "stray.xml", format="openvino", overwrite=overwrite)
    assert (tmp_path / "notes.xml").read_text() == "<notes>mine</notes>\n" and (tmp_path / "stray.bin").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.xml", "stray.bin"]


def test_interrupted_openvino_export_leaves_the_old_files_and_no_staging(distiller, tmp_path, monkeypatch):
    export_student(distiller, tmp_path / "s.xml", format="openvino")
    before = {name: (tmp_path / name).read_bytes() for name in ("s.xml", "s.bin")}

    def broken_export(self, filepath, **kwargs):
        Path(filepath).write_text("<?xml version=\"1.0\"?>\n<net>")
        Path(filepath).with_suffix(".bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        export_student(distiller, tmp_path / "s.xml", format="openvino", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_openvino_refuses_quantization_with_the_reason(distiller, tmp_path):
    with pytest.raises(ValueError, match="not offered for format='openvino'.*NNCF"):
        export_student(distiller, tmp_path / "s.xml", format="openvino", quantize="int8")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_openvino_names_the_extra_to_install(distiller, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"needs openvino, which is not installed: pip install 'rkd-keras\[openvino\]'"):
        export_student(distiller, tmp_path / "s.xml", format="openvino")
    assert list(tmp_path.iterdir()) == []

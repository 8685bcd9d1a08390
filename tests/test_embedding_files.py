"""Teacher embeddings from a file: `rkd-keras embed`, `Distiller(None, student)` and `distill --teacher-embeddings`."""

import json
import os

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import rkd_keras
from conftest import listing
from rkd_keras import data
from rkd_keras.cli import main
from test_image_folders import QUICK, write_folder

WIDTH = 16


def _rows(count, width=WIDTH, seed=0):
    return [f"class{i % 3}/{i:05d}.png" for i in range(count)], np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_written_rows_read_back_exactly_in_order_and_joined_by_path(suffix, tmp_path):
    paths, embeddings = _rows(10_000)
    file = tmp_path / f"teacher{suffix}"
    chunks = [(paths[i : i + 3000], embeddings[i : i + 3000]) for i in range(0, 10_000, 3000)]
    assert rkd_keras.write_embeddings(file, chunks) == 10_000
    read_paths, read = rkd_keras.read_embeddings(file)
    assert read_paths == paths and read.dtype == np.float32 and np.array_equal(read, embeddings)
    wanted = [paths[7], paths[9_999], paths[0]]
    assert np.array_equal(rkd_keras.read_embeddings(file, paths=wanted), embeddings[[7, 9_999, 0]])
    assert os.listdir(tmp_path) == [file.name]  # no temporary file left


def test_parquet_is_written_in_row_groups_with_the_documented_columns(tmp_path):
    paths, embeddings = _rows(10_000)
    file = tmp_path / "teacher.parquet"
    rkd_keras.write_embeddings(file, [(paths, embeddings)])
    parquet = pq.ParquetFile(file)
    assert parquet.num_row_groups == 3  # 4096 + 4096 + 1808: a reader holds one group at a time
    assert parquet.schema_arrow.names == ["path", "embedding"]
    table = pq.read_table(file)
    assert table.column("path")[5].as_py() == paths[5]
    assert np.allclose(table.column("embedding")[5].as_py(), embeddings[5], rtol=0, atol=0)


def test_a_failed_write_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    file = tmp_path / "teacher.parquet"
    file.write_bytes(b"the previous file")
    paths, embeddings = _rows(20)

    def rows():
        yield paths[:10], embeddings[:10]
        raise RuntimeError("the teacher failed")

    with pytest.raises(RuntimeError, match="the teacher failed"):
        rkd_keras.write_embeddings(file, rows())
    assert os.listdir(tmp_path) == [file.name] and file.read_bytes() == b"the previous file"
    bad = embeddings.copy()
    bad[13, 2] = np.nan
    with pytest.raises(ValueError, match=f"the row of {paths[13]} holds NaN/Inf"):
        rkd_keras.write_embeddings(tmp_path / "new.npz", [(paths, bad)])
    assert os.listdir(tmp_path) == [file.name]


def _parquet_of_widths(file, widths):
    paths = [f"a/{i}.png" for i in range(len(widths))]
    pq.write_table(pa.table({"path": paths, "embedding": [[0.5] * width for width in widths]}), file)
    return paths


@pytest.mark.parametrize(
    "case, words",
    [
        ("unknown suffix", ["has the suffix '.csv'", "give a .parquet file"]),
        ("rows of different widths", ["the row of a/2.png has width 3, the row of a/0.png 4"]),
        ("npz of different widths", ["not one (rows, width) array of floats"]),
        ("non-finite row", ["the row of a/1.png holds NaN/Inf values"]),
        ("missing columns", ["has the columns path, vector, not embedding"]),
        ("path twice", ["the path a/0.png has two rows"]),
    ],
)
def test_a_bad_file_is_refused_naming_the_row(case, words, tmp_path):
    file = tmp_path / ("teacher.npz" if case.startswith("npz") else "teacher.csv" if case == "unknown suffix" else "teacher.parquet")
    if case == "rows of different widths":
        _parquet_of_widths(file, [4, 4, 3])
    elif case == "npz of different widths":
        np.savez(file, paths=np.array(["a", "b"]), embeddings=np.array([np.zeros(2), np.zeros(3)], dtype=object))
    elif case == "non-finite row":
        pq.write_table(pa.table({"path": ["a/0.png", "a/1.png"], "embedding": [[1.0, 2.0], [3.0, float("inf")]]}), file)
    elif case == "missing columns":
        pq.write_table(pa.table({"path": ["a/0.png"], "vector": [[1.0]]}), file)
    elif case == "path twice":
        pq.write_table(pa.table({"path": ["a/0.png", "a/0.png"], "embedding": [[1.0], [2.0]]}), file)
    else:
        file.write_text("path,embedding\n")
    with pytest.raises(ValueError) as error:
        rkd_keras.read_embeddings(file)
    for word in words:
        assert word in str(error.value), str(error.value)


def test_an_image_without_a_row_is_named(tmp_path):
    file = tmp_path / "teacher.npz"
    rkd_keras.write_embeddings(file, [_rows(3)])
    with pytest.raises(ValueError, match=r"the training image class1/00004.png \(and 1 more\) has no row"):
        rkd_keras.read_embeddings(file, paths=["class0/00000.png", "class1/00004.png", "x.png"])


def test_named_dataset_paths_are_split_and_index_in_load_datasets_order():
    paths = data.image_paths("fashion_mnist", "train", classes=[0, 1], validation_fraction=0.25)
    validation = data.image_paths("fashion_mnist", "validation", classes=[0, 1], validation_fraction=0.25)
    # Fashion-MNIST holds 7,000 images of each class: 14,000 of classes 0 and 1, every 4th (from the first) held out.
    assert (len(paths), len(validation)) == (10_500, 3_500)
    assert validation[:3] == ["train/0", "train/4", "train/8"] and paths[:3] == ["train/1", "train/2", "train/3"]
    assert data.image_paths("fashion_mnist", "test")[-1] == "test/34999"
    images = data.load_dataset("fashion_mnist", "validation", classes=[0, 1], validation_fraction=0.25, image_size=28, channels=1)
    assert int(images.reduce(0, lambda count, _: count + 1)) == len(validation)


def _models(seed=0):
    keras.utils.set_random_seed(seed)
    teacher = rkd_keras.embedding_model("small_cnn", WIDTH, input_shape=(8, 8, 1), width=4, name="teacher")
    student = rkd_keras.embedding_model("small_cnn", 4, input_shape=(8, 8, 1), width=2, l2_normalize=False, name="student")
    return teacher, student


def test_a_distiller_without_teacher_trains_exactly_as_on_cached_teacher_embeddings():
    images = np.random.default_rng(1).uniform(0, 255, (32, 8, 8, 1)).astype(np.float32)
    terms = [rkd_keras.Term("rkd_distance", 1.0), rkd_keras.Term("rkd_angle", 2.0)]
    weights = []
    for from_file in (False, True):
        teacher, student = _models()
        if from_file:
            rows = teacher.predict(images, verbose=0)  # as a file would hold them
            distiller = rkd_keras.Distiller(None, student, terms=terms)
            x = {"inputs": images, "teacher_embeddings": rows}
        else:
            distiller = rkd_keras.Distiller(teacher, student, terms=terms)
            x = distiller.cache_teacher_embeddings(images)
        distiller.compile(keras.optimizers.Adam(1e-2))
        history = distiller.fit(x, batch_size=16, epochs=2, shuffle=False, verbose=0).history
        weights.append([w.numpy() for w in student.weights])
        assert history["loss"][-1] > 0
    for cached, from_file in zip(*weights):
        np.testing.assert_array_equal(cached, from_file)


def test_a_distiller_without_teacher_refuses_what_needs_the_teacher_model(tmp_path):
    _, student = _models()
    with pytest.raises(ValueError, match="reads teacher layer 'pool', but this Distiller has no teacher model"):
        rkd_keras.Distiller(None, student, terms=[rkd_keras.Term("rkd_angle", 1.0, teacher_layer="pool", student_layer="pool")])
    with pytest.raises(ValueError, match="learns a regressor .* does not know when it is built"):
        rkd_keras.Distiller(None, student, terms=[rkd_keras.Term("fitnet", 1.0)])
    distiller = rkd_keras.Distiller(None, student, terms=[rkd_keras.Term("rkd_distance", 1.0)])
    images = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="has no teacher model to run"):
        distiller.cache_teacher_embeddings(images)
    rows = np.ones((4, WIDTH), np.float32)
    rows[2, 0] = np.inf
    fresh = rkd_keras.Distiller(None, _models()[1], terms=[rkd_keras.Term("rkd_distance", 1.0)])
    fresh.compile("adam")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="check the teacher embeddings given with the batch"):
        fresh.fit({"inputs": images, "teacher_embeddings": rows}, batch_size=4, verbose=0)
    distiller.compile("adam")
    with pytest.raises(ValueError, match="every batch must carry the teacher's embeddings"):
        distiller.fit(images, batch_size=4, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert loaded.teacher is None and [term.name for term in loaded.terms] == ["rkd_distance"]


def test_with_teacher_embeddings_pairs_rows_and_refuses_another_count():
    images = tf.data.Dataset.from_tensor_slices((np.arange(6, dtype=np.float32)[:, None], np.arange(6) % 2))
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    items = list(rkd_keras.with_teacher_embeddings(images.filter(lambda x, y: True), rows).as_numpy_iterator())
    assert [(float(x["inputs"][0]), x["teacher_embeddings"].tolist(), int(y)) for x, y in items][4] == (4.0, [8.0, 9.0], 0)
    with pytest.raises(ValueError, match="holds 6 images but 5 teacher rows"):
        rkd_keras.with_teacher_embeddings(images, rows[:5])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder of 8 classes, a teacher trained on it, and its embeddings of every image in Parquet."""
    root = tmp_path_factory.mktemp("embed")
    write_folder(root / "images", per_class=12, names=[f"class{i}" for i in range(8)])
    source = ["--dataset", "folder", "--dataset-path", str(root / "images")]
    assert main(["train-teacher", *source, *QUICK, "--runs-dir", str(root / "runs"), "--name", "t"]) == 0
    teacher = root / "runs" / "t" / "best.keras"
    assert main(["embed", "--model", str(teacher), *source, "--output", str(root / "teacher.parquet"), "--quiet"]) == 0
    return root, source, teacher


def test_embed_writes_every_image_of_the_folder_with_the_teachers_embedding(trained, capsys):
    root, source, teacher = trained
    paths, rows = rkd_keras.read_embeddings(root / "teacher.parquet")
    assert sorted(paths) == sorted(p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*.png"))
    assert len(paths) == 96 and rows.shape == (96, 8)
    model = keras.models.load_model(teacher)
    images = data.load_dataset("folder", "train", path=str(root / "images"), classes=list(range(8)), image_size=28,
                               resize_size=32, channels=1, augment=False)
    expected = model.predict(images.batch(96), verbose=0)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


def _refused(argv, where, capsys):
    before = listing(where)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rkd-keras"), err
    assert listing(where) == before
    return err


def _bad_file(case, root, good):
    """A teacher-embeddings file with one thing wrong; returns it and the words of its error."""
    paths, rows = rkd_keras.read_embeddings(good)
    file = root / "bad.parquet"
    if case == "training image without a row":
        # A training image (validation_fraction 0.25 of QUICK), not one held out for validation.
        missing = data.image_paths("folder", "train", path=str(good.parent / "images"), validation_fraction=0.25)[3]
        keep = [i for i, path in enumerate(paths) if path != missing]
        rkd_keras.write_embeddings(file, [([paths[i] for i in keep], rows[keep])])
        return file, [f"the training image {missing} has no row in the teacher embeddings file {file}"]
    if case == "rows of different widths":
        embeddings = [row.tolist() for row in rows]
        embeddings[5] = embeddings[5][:3]
        pq.write_table(pa.table({"path": paths, "embedding": embeddings}), file)
        return file, [f"the row of {paths[5]} has width 3, the row of {paths[0]} 8"]
    if case == "non-finite row":
        rows = rows.copy()
        rows[9, 0] = np.nan
        pq.write_table(pa.table({"path": paths, "embedding": [row.tolist() for row in rows]}), file)
        return file, [f"the row of {paths[9]} holds NaN/Inf values"]
    if case == "unknown suffix":
        file = root / "bad.csv"
        file.write_text("path,embedding\n")
        return file, ["has the suffix '.csv', which names no format"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["training image without a row", "rows of different widths", "non-finite row", "unknown suffix"])
def test_distill_refuses_a_bad_embeddings_file_in_one_line_and_writes_nothing(case, trained, tmp_path, capsys):
    root, source, _ = trained
    file, words = _bad_file(case, tmp_path, root / "teacher.parquet")
    (tmp_path / "runs").mkdir()
    err = _refused(
        ["distill", "--teacher-embeddings", str(file), *source, *QUICK, "--runs-dir", str(tmp_path / "runs"), "--name", "s"],
        tmp_path, capsys,
    )
    for word in words:
        assert word in err, err


def test_distill_refuses_a_width_a_per_example_term_cannot_compare(trained, tmp_path, capsys):
    root, source, _ = trained
    config = tmp_path / "hinton.json"
    config.write_text(json.dumps({"terms": [{"loss": "hinton_kd", "weight": 1.0}]}))
    (tmp_path / "runs").mkdir()
    err = _refused(
        ["distill", "--teacher-embeddings", str(root / "teacher.parquet"), "--config", str(config), *source, *QUICK,
         "--embedding-dim", "4", "--runs-dir", str(tmp_path / "runs"), "--name", "s"], tmp_path, capsys,
    )
    assert "Term 'hinton_kd' (hinton_kd) cannot compare the teacher embeddings of" in err and "(width 8)" in err, err


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["distill", "--teacher-embeddings", "T.parquet", "--augment"], ["--augment trains on random crops", "add --no-augment"]),
        (["embed", "--model", "M.keras", "--output", "out.txt"], ["has the suffix '.txt'"]),
        (["embed", "--model", "M.keras", "--output", "existing.npz"], ["--output existing.npz exists; pass --overwrite"]),
    ],
)
def test_embed_and_compare_refuse_bad_arguments_in_one_line(arguments, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "T.parquet").write_bytes(b"")
    (tmp_path / "existing.npz").write_bytes(b"kept")
    err = _refused(arguments, tmp_path, capsys)
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["embed", "--model", "M.keras", "--output", "x.npz", "--epochs", "3"], ["embed does not read --epochs: it embeds with the --model"]),
        (["compare", "--teacher-embeddings", "T.parquet"], ["compare does not take --teacher-embeddings", "distill --teacher-embeddings FILE"]),
        (["distill", "--teacher", "T.keras", "--teacher-embeddings", "T.parquet"], ["not allowed with argument --teacher"]),
    ],
)
def test_flags_embed_and_compare_do_not_take_are_refused_by_the_parser(arguments, words, capsys):
    with pytest.raises(SystemExit) as exit:
        main(arguments)
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.mark.slow
def test_acceptance_a_folder_teaches_through_an_embeddings_file_by_cli_and_api(tmp_path, capsys):
    """Issue 20, acceptance 1: a folder of 10 Fashion-MNIST classes of PNGs; train-teacher, embed, distill, evaluate."""
    images = tmp_path / "images"
    write_folder(images, per_class=40)
    source = ["--dataset", "folder", "--dataset-path", str(images)]
    settings = ["--epochs", "2", "--steps-per-epoch", "10", "--classes-per-batch", "5", "--samples-per-class", "6",
                "--validation-fraction", "0.2", "--max-train-items", "none", "--max-eval-items", "none", "--quiet"]
    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert main(["train-teacher", *source, *settings, *runs, "--name", "t", "--width", "8", "--embedding-dim", "32"]) == 0
    teacher = tmp_path / "runs" / "t" / "best.keras"
    file = tmp_path / "teacher.parquet"
    assert main(["embed", "--model", str(teacher), *source, "--output", str(file), "--quiet"]) == 0
    student = ["--width", "4", "--embedding-dim", "16"]
    assert main(["distill", "--teacher-embeddings", str(file), *source, *settings, *student, *runs, "--name", "s"]) == 0
    assert main(["distill", "--teacher", str(teacher), *source, *settings, *student, *runs, "--name", "s_model"]) == 0
    output = tmp_path / "student.json"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "runs" / "s" / "best.keras"), *source, "--max-eval-items", "none",
                 "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(output.read_text())
    assert metrics["items"] == 200 and 0 < metrics["recall_at_1"] <= 1  # the 5 unseen classes × 40
    assert f"{100 * metrics['recall_at_1']:.2f}" in printed
    # From the file, the student learns what it learns from the teacher model (its cached embeddings): same seed, same batches.
    from_model = json.loads((tmp_path / "runs" / "s_model" / "metrics.json").read_text())
    assert abs(metrics["recall_at_1"] - from_model["recall_at_1"]) <= 1 / 200, (metrics, from_model)

    # The same through the API.
    options = dict(path=str(images), image_size=28, resize_size=32, channels=1, augment=False)
    teacher_model = keras.models.load_model(teacher)
    every = data.load_dataset("folder", "train", classes=list(range(10)), **options)
    api_file = tmp_path / "api.npz"
    rkd_keras.write_embeddings(api_file, [(data.image_paths("folder", "train", classes=list(range(10)), path=str(images)),
                                           teacher_model.predict(every.batch(256), verbose=0))])
    train = data.load_dataset("folder", "train", validation_fraction=0.2, **options)
    rows = rkd_keras.read_embeddings(api_file, paths=rkd_keras.image_paths("folder", "train", path=str(images), validation_fraction=0.2))
    keras.utils.set_random_seed(0)
    api_student = rkd_keras.embedding_model("small_cnn", 16, input_shape=(28, 28, 1), width=4, l2_normalize=False)
    distiller = rkd_keras.Distiller(None, api_student, terms=[rkd_keras.Term("rkd_distance", 1.0), rkd_keras.Term("rkd_angle", 2.0)])
    distiller.compile(keras.optimizers.Adam(3e-3))
    batches = rkd_keras.pk_batches(rkd_keras.with_teacher_embeddings(train, rows), 5, 6, seed=0, num_batches=10)
    distiller.fit(batches, epochs=2, verbose=0)
    test = data.load_dataset("folder", "test", **options)
    recall = rkd_keras.recall_at_k(*rkd_keras.embed(api_student, test.batch(256)))[1]
    print(f"API student R@1 {100 * recall:.2f}, CLI student R@1 {100 * metrics['recall_at_1']:.2f}")
    assert 0.2 < recall <= 1  # 5 unseen classes: chance is about 0.2


def test_a_named_datasets_training_images_find_their_rows_by_split_and_index(tmp_path):
    from rkd_keras.cli import training
    from rkd_keras.cli.config import resolve_config

    config = resolve_config("student", overrides={"train_classes": [1, 3, 5], "max_train_items": 300})

    def features(images):  # a row that only this image gives: its mean and its first pixels
        images = np.asarray(images, np.float64).reshape(len(images), -1)
        return np.concatenate([images.mean(axis=1, keepdims=True), images[:, 300:304]], axis=1)

    every = data.load_dataset("fashion_mnist", "train", classes=[1, 3, 5], image_size=28, resize_size=32, channels=1, augment=False)
    images = np.concatenate([batch for batch, _ in every.batch(4096).as_numpy_iterator()])
    file = tmp_path / "features.npz"
    rkd_keras.write_embeddings(file, [([f"train/{i}" for i in range(len(images))], features(images))])
    paths, rows = training.teacher_rows(config, file)
    trained = np.concatenate([batch for batch, _ in training.data(config, "train").batch(300).as_numpy_iterator()])
    # Validation (every 10th image, from the first) is held out: the 300 training images are images 1-9, 11-19, ...
    assert len(paths) == 300 and paths[:10] == [f"train/{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11)]
    np.testing.assert_allclose(rows, features(trained), rtol=1e-6)

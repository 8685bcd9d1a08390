"""Runs the Python examples of the README, the docs site's pages and the docstrings on the KERAS_BACKEND backend.

Prints one JSON line of results. Each example is its page's code as written (the README, a page of
docs/, the site that mkdocs.yml builds, or a docstring, which its API reference shows), with only its
sizes shrunk (epochs, batches, trials and items, by the replacements below, each of which must match)
and, where the page leaves a name to the reader (`images`, a saved `teacher.keras`), a setup line that
defines it. Examples that share a story (the
ten-line API, the teacher cache, the search, serving) run in one namespace, in the order below, whichever
page holds them. `python tests/readme_examples.py REPOSITORY WORKDIR`.
"""

import json
import os
import re
import sys
import textwrap
import traceback
from pathlib import Path

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
ALL = ("tensorflow", "jax", "torch")
ROOT = Path(__file__).parents[1]

# Where each example starts (a line of its code), the page that holds it, the backends the page says it
# runs on, the namespace it runs in, the code run before it, and the (old, new) replacements that shrink it.
EXAMPLES = [
    {
        "anchor": "train = rkd_keras.load_dataset(\"fashion_mnist\", \"train\"",
        "page": "README.md",
        "backends": ALL,
        "story": "api",
        "shrink": [
            ("augment=False)\n", "augment=False).take(600)\n"),
            ("num_batches=80", "num_batches=2"),
            ("channels=1).batch(256)", "channels=1).take(300).batch(256)"),
        ],
    },
    {
        "anchor": "from rkd_keras import Distiller, Term",
        "page": "README.md",
        "backends": ALL,
        "story": "terms",
        "setup": (
            "import keras, numpy as np\n"
            "x = inputs = keras.Input((32, 32, 3))\n"
            "x = keras.layers.Conv2D(8, 3, strides=4, activation='relu')(x)\n"
            "pooled = keras.layers.GlobalAveragePooling2D(name='pool')(x)\n"
            "keras.Model(inputs, keras.layers.Dense(100, name='logits')(pooled), name='teacher').save('teacher.keras')\n"
            "images = np.random.default_rng(0).uniform(size=(48, 32, 32, 3)).astype('float32')\n"
            "labels = np.arange(48) % 100\n"
        ),
        "shrink": [("batch_size=128", "batch_size=16")],
    },
    {
        "anchor": "train = rkd_keras.load_dataset(\"folder\", \"train\", path=\"my_images\"",
        "page": "docs/index.md",
        "backends": ALL,
        "story": "folder",
        "setup": (
            "import os, numpy as np, tensorflow as tf, rkd_keras\n"
            "for c in range(4):\n"
            "    os.makedirs(f'my_images/class{c}', exist_ok=True)\n"
            "    for i in range(3):\n"
            "        image = np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)\n"
            "        open(f'my_images/class{c}/{i}.png', 'wb').write(tf.io.encode_png(image).numpy())\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "cached = distiller.cache_teacher_embeddings(train)",
        "page": "docs/terms.md",
        "backends": ALL,
        "story": "api",
        "setup": "import numpy as np\nimages = np.stack([x for x, _ in train.take(32).as_numpy_iterator()])\n",
        "shrink": [("num_batches=80", "num_batches=2")],
    },
    {
        "anchor": "strategy = tf.distribute.MirroredStrategy()",
        "page": "docs/scaling.md",
        "backends": ("tensorflow",),
        "story": "api",
        "setup": "import tensorflow as tf\nteacher.save('teacher.keras')\n",
        "shrink": [],
    },
    {
        "anchor": "from rkd_keras.tuning import RKDHyperModel, search_loss_weights",
        "page": "docs/terms.md",
        "backends": ALL,
        "story": "api",
        "shrink": [
            ("validation_fraction=0.1).batch(256)", "validation_fraction=0.1).take(200).batch(256)"),
            ("max_trials=20", "max_trials=1, epochs=1"),
        ],
    },
    {
        "anchor": "rkd_keras.export_student(distiller, \"student_savedmodel\")",
        "page": "docs/serving.md",
        "backends": ("tensorflow", "jax"),
        "story": "api",
        "setup": "import tensorflow as tf\n",
        # The backends table (docs/scaling.md): load_student (a TFSMLayer) is TensorFlow's only.
        "only_tensorflow": ["layer = rkd_keras.load_student("],
        "shrink": [],
    },
    {
        "anchor": "rkd_keras.export_student(distiller, \"student.onnx\", format=\"onnx\")",
        "page": "docs/serving.md",
        "backends": ("tensorflow",),
        "story": "api",
        "shrink": [],
    },
    {
        "anchor": "wide = rkd_keras.embedding_model(\"small_cnn\", 128",
        "page": "docs/serving.md",
        "backends": ALL,
        "story": "api",
        "shrink": [("epochs=6", "epochs=1")],
    },
    # The docstrings' code examples, which the API reference shows (their `>>>` examples run as doctests).
    # They run in a folder of their own, on small models whose layers have the names the examples read.
    {
        "anchor": "train = load_dataset(\"fashion_mnist\", \"train\", task=\"classification\"",
        "page": "rkd_keras/data.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": (
            "import os, keras, numpy as np, tensorflow as tf, rkd_keras\n"
            "os.makedirs('docstrings', exist_ok=True)\n"
            "os.chdir('docstrings')\n"
            "def classifier(width, name):\n"
            "    x = inputs = keras.Input((32, 32, 3))\n"
            "    x = keras.layers.Conv2D(width, 3, strides=4, activation='relu')(x)\n"
            "    pooled = keras.layers.GlobalAveragePooling2D(name='pool')(x)\n"
            "    return keras.Model(inputs, keras.layers.Dense(10, name='logits')(pooled), name=name)\n"
            "teacher, student = classifier(16, 'teacher'), classifier(8, 'student')\n"
            "images = np.random.default_rng(0).uniform(0, 255, size=(48, 32, 32, 3)).astype('float32')\n"
            "labels = np.arange(48) % 4\n"
            "from rkd_keras.data import load_dataset\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "distiller = rkd_keras.Distiller(teacher, student)   # RKD-D + 2 · RKD-A on the outputs",
        "page": "rkd_keras/distiller.py",
        "backends": ALL,
        "story": "docstrings",
        "shrink": [],
    },
    {
        "anchor": "cached = distiller.cache_teacher_embeddings(train_images)",
        "page": "rkd_keras/distiller.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": (
            "distiller = rkd_keras.Distiller(teacher, student)\n"
            "distiller.compile(keras.optimizers.Adam(1e-4))\n"
            "train_images = images\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "terms = build_terms(CLASSIFICATION_RECIPE[\"terms\"])",
        "page": "rkd_keras/terms.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": "from rkd_keras.presets import CLASSIFICATION_RECIPE\nfrom rkd_keras.terms import build_terms\n",
        "shrink": [],
    },
    {
        "anchor": "embeddings, labels = embed(student, test.batch(256))",
        "page": "rkd_keras/retrieval.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": (
            "from rkd_keras.retrieval import embed, recall_at_k\n"
            "test = tf.data.Dataset.from_tensor_slices((images, labels))\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "recall = RetrievalRecall((test_images, test_labels))",
        "page": "rkd_keras/retrieval.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": (
            "from rkd_keras.retrieval import RetrievalRecall\n"
            "test_images, test_labels, train = images, np.arange(48) % 4, images\n"
            "distiller = rkd_keras.Distiller(teacher, student)\n"
            "distiller.compile(keras.optimizers.Adam(1e-4))\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "hypermodel = RKDHyperModel(teacher, lambda: embedding_model(",
        "page": "rkd_keras/tuning.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": "from rkd_keras.models import embedding_model\nfrom rkd_keras.tuning import RKDHyperModel\n",
        "shrink": [],
    },
    {
        "anchor": "teacher.compile(optimizer=\"adam\", loss=TripletLoss(margin=0.2))",
        "page": "rkd_keras/losses/wrappers.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": "from rkd_keras.losses import TripletLoss\n",
        "shrink": [],
    },
    {
        "anchor": "export_student(distiller, \"student_savedmodel\")\n",
        "page": "rkd_keras/export.py",
        "backends": ("tensorflow",),
        "story": "docstrings",
        "setup": "from rkd_keras.export import export_student\n",
        "shrink": [],
    },
    {
        "anchor": "embed = load_student(\"student_savedmodel\")",
        "page": "rkd_keras/export.py",
        "backends": ("tensorflow",),
        "story": "docstrings",
        "setup": "from rkd_keras.export import load_student\n",
        "shrink": [],
    },
    {
        "anchor": "distiller = rkd_keras.Distiller(teacher, student, terms=[rkd_keras.Term(\"dkd\")])",
        "page": "rkd_keras/distiller.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": "x, y = images, labels\n",
        "shrink": [],
    },
    {
        "anchor": "teacher.compile(optimizer=\"adam\", loss=PrototypicalLoss(shots=5))",
        "page": "rkd_keras/losses/wrappers.py",
        "backends": ALL,
        "story": "docstrings",
        "setup": (
            "from rkd_keras.data import pk_batches\n"
            "from rkd_keras.losses import PrototypicalLoss\n"
            "train = tf.data.Dataset.from_tensor_slices((images, labels))\n"
        ),
        "shrink": [("shots=5", "shots=2"), ("classes_per_batch=20, samples_per_class=5 + 15", "classes_per_batch=4, samples_per_class=2 + 2")],
    },
    # The teacher-embeddings files' examples, on a folder of ten classes of twelve images (in the docstrings' folder).
    {
        "anchor": "rkd_keras.write_embeddings(\"teacher.parquet\", [([\"coat/0001.png\", \"bag/0002.png\"], np.eye(2, 128))])",
        "page": "rkd_keras/embedding_files.py",
        "backends": ALL,
        "story": "embeddings",
        "setup": (
            "import os, keras, numpy as np, tensorflow as tf, rkd_keras\n"
            "for c in range(10):\n"
            "    os.makedirs(f'images/class{c}', exist_ok=True)\n"
            "    for i in range(12):\n"
            "        image = np.random.default_rng(100 * c + i).integers(0, 255, (28, 28, 1), dtype=np.uint8)\n"
            "        open(f'images/class{c}/{i}.png', 'wb').write(tf.io.encode_png(image).numpy())\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "rows = rkd_keras.read_embeddings(\"teacher.parquet\", paths=rkd_keras.image_paths(\"folder\", \"train\", path=\"images\"))",
        "page": "rkd_keras/embedding_files.py",
        "backends": ALL,
        "story": "embeddings",
        "setup": (
            "every = rkd_keras.image_paths('folder', 'train', path='images')\n"
            "rkd_keras.write_embeddings('folder.parquet', [(every, np.random.default_rng(0).normal(size=(len(every), 16)))])\n"
        ),
        "shrink": [("\"teacher.parquet\"", "\"folder.parquet\"")],
    },
    {
        "anchor": "cached = rkd_keras.with_teacher_embeddings(train, rkd_keras.read_embeddings(file, paths=paths))",
        "page": "rkd_keras/embedding_files.py",
        "backends": ALL,
        "story": "embeddings",
        "setup": (
            "file, paths = 'folder.parquet', rkd_keras.image_paths('folder', 'train', path='images')\n"
            "train = rkd_keras.load_dataset('folder', 'train', path='images', image_size=28, channels=1, augment=False)\n"
            "student = rkd_keras.embedding_model('small_cnn', 8, input_shape=(28, 28, 1), width=4, l2_normalize=False)\n"
            "distiller = rkd_keras.Distiller(None, student)\n"
            "distiller.compile(keras.optimizers.Adam(1e-3))\n"
        ),
        "shrink": [],
    },
    {
        "anchor": "paths = load_dataset(\"folder\", \"train\", path=\"images/\", decode=False)",
        "page": "rkd_keras/data.py",
        "backends": ALL,
        "story": "embeddings",
        "setup": "from rkd_keras.data import folder_image_loader, load_dataset, pk_batches\n",
        # The folder's 5 training classes of 12 images, at the images' own size.
        "shrink": [("image_size=224, resize_size=256", "image_size=28, resize_size=32"), ("25, 5,", "4, 3,")],
    },
]


def pages(root=ROOT) -> list[str]:
    """The README and every page of the docs site, as paths relative to the repository."""
    return ["README.md", *sorted(path.relative_to(root).as_posix() for path in (root / "docs").glob("*.md"))]


def sources(root=ROOT) -> list[str]:
    """The pages, and the package's modules whose docstrings hold Python code examples (the API reference's)."""
    modules = sorted(path.relative_to(root).as_posix() for path in (root / "rkd_keras").rglob("*.py"))
    return [*pages(root), *(module for module in modules if python_blocks((root / module).read_text()))]


def python_blocks(text: str) -> list[str]:
    # A docstring's block is indented as its docstring; a page's is not, and dedent leaves it as it is.
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def page_blocks(example, root=ROOT) -> list[str]:
    return python_blocks((Path(root) / example["page"]).read_text())


def example_code(blocks, example):
    matches = [block for block in blocks if example["anchor"] in block]
    if len(matches) != 1:
        raise LookupError(
            f"{len(matches)} examples of {example['page']} hold {example['anchor']!r}; update tests/readme_examples.py"
        )
    code = matches[0]
    for old, new in example["shrink"]:
        if old not in code:
            raise LookupError(f"the example {example['anchor']!r} of {example['page']} no longer holds {old!r}")
        code = code.replace(old, new)
    code = re.sub(r"\bepochs=\d+", "epochs=1", code)
    if BACKEND != "tensorflow":
        lines = code.splitlines()
        code = "\n".join(line for line in lines if not any(line.startswith(s) for s in example.get("only_tensorflow", [])))
    return code


def main(root, workdir):
    blocks = {example["page"]: page_blocks(example, root) for example in EXAMPLES}
    os.chdir(workdir)
    namespaces, results = {}, {}
    for example in EXAMPLES:
        if BACKEND not in example["backends"]:
            continue
        namespace = namespaces.setdefault(example["story"], {"__name__": "__readme__"})
        try:
            code = example_code(blocks[example["page"]], example)
            exec(compile(example.get("setup", "") + code, example["anchor"], "exec"), namespace)
            results[example["anchor"]] = "ok"
        except Exception:  # reported by the test, with the traceback
            results[example["anchor"]] = traceback.format_exc(limit=4)
    print(json.dumps({"backend": BACKEND, "results": results}))


if __name__ == "__main__":
    main(*sys.argv[1:])

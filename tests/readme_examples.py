"""Runs the Python examples of the README and of the docs site's pages on the backend KERAS_BACKEND names.

Prints one JSON line of results. Each example is its page's code as written (the README, or a page of
docs/, the site that mkdocs.yml builds), with only its sizes shrunk (epochs, batches, trials and items,
by the replacements below, each of which must match) and, where the page leaves a name to the reader
(`images`, a saved `teacher.keras`), a setup line that defines it. Examples that share a story (the
ten-line API, the teacher cache, the search, serving) run in one namespace, in the order below, whichever
page holds them. `python tests/readme_examples.py REPOSITORY WORKDIR`.
"""

import json
import os
import re
import sys
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
]


def pages(root=ROOT) -> list[str]:
    """The README and every page of the docs site, as paths relative to the repository."""
    return ["README.md", *sorted(path.relative_to(root).as_posix() for path in (root / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


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

"""My teacher is not Keras: distil a PyTorch teacher into a Keras student with RKD, through a file.

RKD needs nothing of the teacher but its embedding of each training image
(Park et al., CVPR 2019: the student copies the distances and angles between
the teacher's embeddings of a batch). So the teacher can be anything that
writes one row per image: a PyTorch or JAX model, or an embedding service.

1. An image folder, one subfolder per class, made from the offline
   Fashion-MNIST files (your own images go here instead).
2. A plain PyTorch `nn.Module` teacher, trained briefly on the first five
   classes (sorted by name), embeds every image and writes them to Parquet:
   a column `path` (relative to the folder) and a column `embedding`.
3. A Keras student learns RKD-DA from that file alone: `Distiller(None,
   student)` has no teacher model, its batches carry the teacher's rows.
4. Recall@K of both on the five classes neither has seen.

Run it:  python examples/distill_from_pytorch.py          (600 images a class, 4 epochs)
         python examples/distill_from_pytorch.py --quick  (a smoke test)
The command line does step 3 too: rkd-keras distill --teacher-embeddings teacher.parquet
--dataset folder --dataset-path DIR --no-augment.
"""

import argparse
import tempfile
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import rkd_keras

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="a few images and steps only, to check that it runs")
parser.add_argument("--workdir", help="where to write the folder and the Parquet file (default: a temporary folder)")
args = parser.parse_args()
per_class, teacher_epochs, steps, epochs = (40, 2, 5, 1) if args.quick else (600, 4, 60, 4)
keras.utils.set_random_seed(0)
torch.manual_seed(0)
workdir = Path(args.workdir or tempfile.mkdtemp(prefix="distill_from_pytorch_"))

# 1. The image folder: DIR/CLASS/IMAGE.png. rkd_keras sorts the class names; the first
#    half (ankle_boot, bag, coat, dress, pullover) trains, the others are unseen.
NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
folder = workdir / "images"
if not folder.exists():
    fashion = rkd_keras.load_dataset("fashion_mnist", "train", task="classification", image_size=28, channels=1, augment=False)
    written = dict.fromkeys(range(10), 0)
    for index, (image, label) in enumerate(fashion.as_numpy_iterator()):
        if written[int(label)] < per_class:
            (folder / NAMES[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0].astype(np.uint8)).save(folder / NAMES[label] / f"{index:05d}.png")
            written[int(label)] += 1
        if min(written.values()) == per_class:
            break
class_names = sorted(path.name for path in folder.iterdir())
train_classes = class_names[: (len(class_names) + 1) // 2]


# 2. The PyTorch teacher: a small CNN with a 64-d L2-normalized embedding, trained as a
#    classifier of the five training classes (only its embedding is written).
class Teacher(torch.nn.Module):
    def __init__(self, classes, width=64):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, width),
        )
        self.head = torch.nn.Linear(width, classes)

    def forward(self, images):  # the embedding
        return torch.nn.functional.normalize(self.features(images), dim=1)


def read(paths):
    """Images as PyTorch reads them: (N, 1, 28, 28) floats in [0, 1]."""
    return torch.tensor(np.stack([np.asarray(Image.open(folder / path), np.float32) / 255 for path in paths])[:, None])


every = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))
train_paths = [path for path in every if path.split("/")[0] in train_classes]
train_images = read(train_paths)
train_labels = torch.tensor([train_classes.index(path.split("/")[0]) for path in train_paths])
teacher = Teacher(len(train_classes))
optimizer = torch.optim.Adam(teacher.parameters(), 1e-3)
print(f"Training the PyTorch teacher on {len(train_paths)} images of {', '.join(train_classes)}")
for epoch in range(teacher_epochs):
    for batch in torch.randperm(len(train_paths)).split(64):
        # Cross-entropy on its head over the normalized embedding (scaled: a cosine classifier).
        logits = teacher.head(teacher(train_images[batch])) * 10
        loss = torch.nn.functional.cross_entropy(logits, train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"  epoch {epoch + 1}: loss {loss.item():.3f}")

# The file: one row per image, its path relative to the folder and its embedding. Any
# tool that writes these two columns works (rkd_keras.write_embeddings also writes them,
# atomically, as `rkd-keras embed` does for a Keras teacher).
teacher.eval()
with torch.no_grad():
    embeddings = torch.cat([teacher(read(every[i : i + 512])) for i in range(0, len(every), 512)]).numpy()
parquet = workdir / "teacher.parquet"
pq.write_table(pa.table({"path": every, "embedding": list(embeddings)}), parquet)
print(f"Wrote {len(every)} teacher embeddings (width {embeddings.shape[1]}) to {parquet}")

# 3. The Keras student learns from the file alone. image_paths gives each image's path
#    in the order load_dataset gives the images; read_embeddings finds each one's row
#    (and names any image without one).
options = dict(path=str(folder), image_size=28, resize_size=28, channels=1, augment=False)
train = rkd_keras.load_dataset("folder", "train", **options)
rows = rkd_keras.read_embeddings(parquet, paths=rkd_keras.image_paths("folder", "train", path=str(folder)))
batches = rkd_keras.pk_batches(
    rkd_keras.with_teacher_embeddings(train, rows), classes_per_batch=5, samples_per_class=12, seed=0, num_batches=steps
)
student = rkd_keras.embedding_model("small_cnn", 32, input_shape=(28, 28, 1), width=8, l2_normalize=False, name="student")
# No teacher model: the paper's λ_D = 1, λ_A = 2 on the teacher's rows, no task loss.
distiller = rkd_keras.Distiller(None, student, terms=[rkd_keras.Term("rkd_distance", 1.0), rkd_keras.Term("rkd_angle", 2.0)])
distiller.compile(keras.optimizers.Adam(3e-3))
print("Distilling the Keras student with RKD-DA from the file")
distiller.fit(batches, epochs=epochs, verbose=2)

# 4. Recall@K on the unseen classes: the teacher's from its rows, the student's from its embeddings.
test = rkd_keras.load_dataset("folder", "test", **options)
labels = np.concatenate([batch_labels for _, batch_labels in test.batch(512).as_numpy_iterator()])
teacher_rows = rkd_keras.read_embeddings(parquet, paths=rkd_keras.image_paths("folder", "test", path=str(folder)))
student_rows, _ = rkd_keras.embed(student, test.batch(256))
print(f"\nRecall@K on {len(labels)} images of the unseen classes ({', '.join(class_names[len(train_classes):])})")
for name, rows in (("teacher", teacher_rows), ("student", student_rows)):
    recalls = rkd_keras.recall_at_k(rows, labels)
    print(f"{name} R@1={100 * recalls[1]:.2f} " + " ".join(f"R@{k}={100 * r:.2f}" for k, r in recalls.items() if k > 1))

"""The paper's CUB-200-2011 recipe, with the rkd_keras API.

Park et al. (CVPR 2019), §4.1: a ResNet50 teacher with 512-d L2-normalized
embeddings, trained with the triplet loss and distance-weighted sampling;
then a ResNet18 student with 128-d embeddings and *no* L2 normalization,
trained by RKD-DA alone (λ_D = 1, λ_A = 2, no triplet loss). Classes 0–99
train, the unseen classes 100–199 test, Recall@1/2/4/8.

This needs a GPU and the CUB archive: with internet, `--download` lets
tensorflow-datasets fetch it; offline, put CUB_200_2011.tgz in a folder and
pass `--manual-dir FOLDER --download`. ImageNet weights for the teacher come
from keras.applications (internet) unless `--no-imagenet`.

    python examples/cub200_recipe.py --download            # the paper's schedule
    python examples/cub200_recipe.py --quick --no-imagenet  # a smoke test: small CNNs, tiny images
"""

import argparse

import keras

import rkd_keras

parser = argparse.ArgumentParser(description="The paper's CUB-200-2011 recipe")
parser.add_argument("--quick", action="store_true", help="small CNNs on tiny images, a few steps: check that it runs")
parser.add_argument("--download", action="store_true", help="let tensorflow-datasets prepare CUB")
parser.add_argument("--manual-dir", help="folder holding CUB_200_2011.tgz (offline)")
parser.add_argument("--no-imagenet", action="store_true", help="random initial weights for the teacher")
args = parser.parse_args()

# The paper: 224-pixel crops of 256-pixel images, batches of 25 classes × 5
# images, 100 iterations per epoch; teacher 40 epochs, student 80.
size, epochs_t, epochs_s, steps, p, k = (32, 1, 1, 2, 4, 2) if args.quick else (224, 40, 80, 100, 25, 5)
keras.utils.set_random_seed(0)
options = dict(download=args.download, manual_dir=args.manual_dir)

# Training images are stored resized to 256 (×size/224); each epoch crops and
# flips them anew. Test images are centre-cropped.
resize = round(size * 256 / 224)
train = rkd_keras.load_dataset("cub200", "train", image_size=resize, resize_size=resize, augment=False, **options)


def random_crop_and_flip(image, label):
    return rkd_keras.data.preprocess_image(image, image_size=size, resize_size=resize, augment=True), label


batches = rkd_keras.pk_batches(train, p, k, seed=0, num_batches=steps, map_fn=random_crop_and_flip)
test = rkd_keras.load_dataset("cub200", "test", image_size=size, **options).batch(64)
recall = rkd_keras.RetrievalRecall(test)  # the paper reports test Recall@K each epoch


def adam(learning_rate, decay_epochs, factor):
    """Adam with weight decay 1e-5 and step decay of the learning rate, as the paper."""
    boundaries = [epoch * steps for epoch in decay_epochs]
    values = [learning_rate * factor**i for i in range(len(boundaries) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return keras.optimizers.Adam(schedule, weight_decay=1e-5)


# Teacher: ResNet50 → 512-d, L2-normalized; lr 1e-5 halved at epochs 25, 30, 35.
# (--quick swaps both networks for small CNNs: the pipeline is the same, the tracing far shorter.)
teacher_backbone, student_backbone = ("small_cnn", "small_cnn") if args.quick else ("resnet50", "resnet18")
teacher = rkd_keras.embedding_model(
    teacher_backbone, 512, input_shape=(size, size, 3), weights=None if args.no_imagenet or args.quick else "imagenet"
)
teacher.compile(adam(1e-5, [25, 30, 35], 0.5), loss=rkd_keras.TripletLoss(margin=0.2))
teacher.fit(batches, epochs=epochs_t, callbacks=[recall])

# Student: ResNet18 → 128-d, no L2; RKD-DA only; lr 1e-4 divided by 10 at 40, 60.
student = rkd_keras.embedding_model(student_backbone, 128, input_shape=(size, size, 3), l2_normalize=False)
distiller = rkd_keras.Distiller(teacher, student, distance_weight=1.0, angle_weight=2.0)
distiller.compile(adam(1e-4, [40, 60], 0.1))
distiller.fit(batches, epochs=epochs_s, callbacks=[recall])

for name, model in (("teacher", teacher), ("student", student)):
    recalls = rkd_keras.recall_at_k(*recall.embed(model))
    print(name, " ".join(f"R@{k}={100 * r:.2f}" for k, r in recalls.items()))

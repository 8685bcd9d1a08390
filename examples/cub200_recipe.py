"""The paper's CUB-200-2011 recipe, with the rkd_keras API.

Park et al. (CVPR 2019), §4.1: a ResNet50 teacher with 512-d L2-normalized
embeddings, trained with the triplet loss and distance-weighted sampling;
then a ResNet18 student with 128-d embeddings and *no* L2 normalization,
trained by RKD-DA alone (λ_D = 1, λ_A = 2, no triplet loss). Classes 0–99
train, the unseen classes 100–199 test, Recall@1/2/4/8. The numbers of the
recipe are read from `rkd_keras.presets`, the same ones
`rkd-keras train-teacher --preset cub200` uses.

This needs a GPU and the CUB archive: with internet, `--download` lets
tensorflow-datasets fetch it and Keras the teacher's ImageNet weights;
offline, put CUB_200_2011.tgz in a folder and pass `--manual-dir FOLDER
--download`, and copy the weights into Keras's cache (or `--no-imagenet`).

    python examples/cub200_recipe.py --download            # the paper's schedule
    python examples/cub200_recipe.py --quick --no-imagenet  # a smoke test: small CNNs, tiny images
"""

import argparse

import keras

import rkd_keras

parser = argparse.ArgumentParser(description="The paper's CUB-200-2011 recipe")
parser.add_argument("--quick", action="store_true", help="small CNNs on tiny images, a few steps: check that it runs")
parser.add_argument("--download", action="store_true", help="let tensorflow-datasets prepare CUB, Keras fetch weights")
parser.add_argument("--manual-dir", help="folder holding CUB_200_2011.tgz (offline)")
parser.add_argument("--no-imagenet", action="store_true", help="random initial weights for the teacher")
args = parser.parse_args()

teacher_recipe = rkd_keras.presets.get("cub200", "teacher")
student_recipe = rkd_keras.presets.get("cub200", "student")
if args.quick:
    # The same pipeline with small CNNs on tiny images, a few steps: the tracing is far shorter.
    for recipe in (teacher_recipe, student_recipe):
        recipe.update(image_size=32, epochs=1, steps_per_epoch=2, classes_per_batch=4, samples_per_class=2)
        recipe.update(backbone="small_cnn", weights=None)
if args.no_imagenet:
    teacher_recipe["weights"] = None
keras.utils.set_random_seed(0)
options = dict(download=args.download, manual_dir=args.manual_dir)

# Training images are stored resized to 256 (×size/224); each epoch crops and
# flips them anew. Test images are centre-cropped. (Teacher and student share
# the data settings of the recipe.)
size = teacher_recipe["image_size"]
resize = rkd_keras.recipes.resize_size(teacher_recipe)  # 256 for 224 crops, as the paper
train = rkd_keras.load_dataset("cub200", "train", image_size=resize, resize_size=resize, augment=False, **options)


def random_crop_and_flip(image, label):
    return rkd_keras.data.preprocess_image(image, image_size=size, resize_size=resize, augment=True), label


# Batches of P classes × K images (the paper: 25 × 5), a fixed number per epoch.
batches = rkd_keras.pk_batches(
    train, teacher_recipe["classes_per_batch"], teacher_recipe["samples_per_class"],
    seed=0, num_batches=teacher_recipe["steps_per_epoch"], map_fn=random_crop_and_flip,
)
test = rkd_keras.load_dataset("cub200", "test", image_size=size, **options).batch(64)
recall = rkd_keras.RetrievalRecall(test)  # the paper reports test Recall@K each epoch


# Teacher: ResNet50 → 512-d, L2-normalized; lr 1e-5 halved at epochs 25, 30, 35.
# rkd_keras.recipes builds what the recipe names (network, Adam with its step decay), as the command line does.
teacher = rkd_keras.recipes.network(teacher_recipe, download=args.download)
teacher.compile(rkd_keras.recipes.optimizer(teacher_recipe), loss=rkd_keras.TripletLoss(margin=teacher_recipe["margin"]))
teacher.fit(batches, epochs=teacher_recipe["epochs"], callbacks=[recall])

# Student: ResNet18 → 128-d, no L2; RKD-DA only; lr 1e-4 divided by 10 at 40, 60.
student = rkd_keras.recipes.network(student_recipe, download=args.download)
distiller = rkd_keras.Distiller(
    teacher, student, distance_weight=student_recipe["distance_weight"], angle_weight=student_recipe["angle_weight"]
)
distiller.compile(rkd_keras.recipes.optimizer(student_recipe))
distiller.fit(batches, epochs=student_recipe["epochs"], callbacks=[recall])

for name, model in (("teacher", teacher), ("student", student)):
    recalls = rkd_keras.recall_at_k(*rkd_keras.embed(model, test))
    print(name, " ".join(f"R@{k}={100 * r:.2f}" for k, r in recalls.items()))

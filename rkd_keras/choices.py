"""The names users choose among: datasets, backbones, triplet samplings.

Plain data, no TensorFlow: the command line checks its flags and config files
against these before it loads the library (see `rkd_keras.cli`), and the
library's loaders and builders accept exactly these names.
"""

# dataset → classes of its training split and of its test split, class-disjoint
# as in the paper: CUB-200-2011 0–99 / 100–199, Cars196 0–97 / 98–195,
# Stanford Online Products Ebay_train / Ebay_test, Fashion-MNIST 0–4 / 5–9.
DATASET_CLASSES = {
    "cub200": (100, 100),
    "cars196": (98, 98),
    "sop": (11_318, 11_316),
    "fashion_mnist": (5, 5),
}
DATASETS = tuple(DATASET_CLASSES)

# backbone → smallest image side it takes. small_cnn pools twice (4 → 1);
# the ImageNet-style backbones downsample by 32, and keras.applications
# refuses inputs below 32 × 32.
BACKBONE_MIN_IMAGE_SIZE = {
    "small_cnn": 4,
    "resnet18": 32,
    "resnet50": 32,
    "resnet101": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "efficientnet_b0": 32,
}
BACKBONES = tuple(BACKBONE_MIN_IMAGE_SIZE)

# Negative sampling of `rkd_keras.losses.triplet_loss`.
TRIPLET_SAMPLINGS = ("distance_weighted", "batch_hard", "all")

"""The names users choose among: tasks, datasets, backbones and their stages, losses, triplet samplings.

Plain data, no TensorFlow: the command line checks its flags and config files
against these before it loads the library (see `rkd_keras.cli`), and the
library's loaders and builders accept exactly these names.
"""

# Metric learning: train on some classes, retrieve among unseen ones (Recall@K).
# Classification: train and test on the same classes (accuracy).
TASKS = ("metric", "classification")

# dataset → classes of its training split and of its test split for metric
# learning, class-disjoint as in the paper: CUB-200-2011 0–99 / 100–199,
# Cars196 0–97 / 98–195, Stanford Online Products Ebay_train / Ebay_test,
# Fashion-MNIST 0–4 / 5–9 (the offline default), glyphs 0–199 / 200–399 (generated, `rkd_keras.glyphs`).
DATASET_CLASSES = {
    "cub200": (100, 100),
    "cars196": (98, 98),
    "sop": (11_318, 11_316),
    "fashion_mnist": (5, 5),
    "glyphs": (200, 200),
}
# dataset → its classes, for classification: every class in train and test.
CLASSIFICATION_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "glyphs": 400}
# "folder": your own images, one subfolder per class (`rkd_keras.image_folders`); its classes are the folder's.
DATASETS = ("cub200", "cars196", "sop", "fashion_mnist", "cifar10", "cifar100", "folder", "glyphs")
# The tasks each dataset serves: the paper's metric-learning datasets have too
# few images per class to classify; CIFAR's classes are few and its own split
# is by image.
DATASET_TASKS = {
    name: tuple(task for task, table in (("metric", DATASET_CLASSES), ("classification", CLASSIFICATION_CLASSES)) if name in table)
    for name in DATASETS
}
DATASET_TASKS["folder"] = TASKS
# The loader arguments only some datasets read (`load_dataset`'s keywords, the CLI's settings of the same
# names): given to another dataset they would be ignored in silence (a folder of images as --data-dir trained
# on Fashion-MNIST), so they are refused. A dataset that reads one of them adds itself to its row.
TFDS_DATASETS = ("cub200", "cars196", "sop", "cifar10", "cifar100")
DATASET_ARGUMENTS = {
    "data_dir": TFDS_DATASETS,
    "manual_dir": TFDS_DATASETS,
    "path": ("fashion_mnist", "folder"),
}

# Metric learning with other training classes (`classes=`, CLI `train_classes`)
# needs a dataset whose test classes can be "the others": not SOP, whose two
# splits are separate sets of products.
CLASS_SPLIT_DATASETS = ("cub200", "cars196", "fashion_mnist", "folder", "glyphs")

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

# backbone → the layers that give the output of each of its stages, the
# feature maps that FitNet and attention-transfer terms read (`Term(...,
# teacher_layer=..., student_layer=...)`). rkd_keras's own backbones name
# them `stage1`, `stage2`, ...; keras.applications backbones keep their own
# names: the last block of each resolution (strides 4, 8, 16, 32). Every
# model built by `embedding_model` or `classifier_model` also has `pool`
# (the globally pooled features).
BACKBONE_STAGES = {
    "small_cnn": ("stage1", "stage2", "stage3"),
    "resnet18": ("stage1", "stage2", "stage3", "stage4"),
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
    "mobilenet_v2": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    "mobilenet_v3_small": ("expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_7_add", "expanded_conv_10_add"),
    "efficientnet_b0": ("block2b_add", "block3b_add", "block5c_add", "top_activation"),
}

# Negative sampling of `rkd_keras.losses.triplet_loss`.
TRIPLET_SAMPLINGS = ("distance_weighted", "batch_hard", "all")

# The distillation losses of `rkd_keras.losses.LOSSES`: the names a term of a run's settings may use.
DISTILLATION_LOSSES = (
    "rkd_distance",
    "rkd_angle",
    "dark_rank",
    "similarity_preserving",
    "pkt",
    "correlation_congruence",
    "relaxed_contrastive",
    "dist_kd",
    "hinton_kd",
    "dkd",
    "attention_transfer",
    "fitnet",
)
# The losses of (labels, embeddings): a model's own loss, not a comparison of a teacher with a student.
TASK_LOSSES = ("triplet_loss", "prototypical_loss")
# Every name of `rkd_keras.losses.LOSSES`, in its order (a test keeps the two equal).
LOSS_NAMES = DISTILLATION_LOSSES + TASK_LOSSES

# Keras's `model.export` formats that `export_student` writes and `check_export` runs: format → (file
# suffix, or None for a folder; the packages that write and run it; the extra of rkd-keras that installs
# them; what the artifact is).
EXPORT_FORMATS = {
    "tf_saved_model": (None, ("tensorflow",), None, "a TF SavedModel folder"),
    "onnx": (".onnx", ("tf2onnx", "onnx", "onnxruntime"), "export", "an ONNX file"),
    "litert": (".tflite", ("ai_edge_litert",), "export", "a LiteRT (TFLite) file"),
    "openvino": (".xml", ("openvino",), "openvino", "an OpenVINO IR model (.xml)"),
}
EXPORT_QUANTIZATIONS = ("float16", "int8")

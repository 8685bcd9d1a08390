"""What the Distiller's steps check finite, and the message of each check; shared by the three backends' steps."""

import keras

INPUTS_NOT_FINITE = (
    "The inputs of this batch hold NaN/Inf values; check the input pipeline (NaN pixels, a normalization "
    "dividing by zero)."
)
LOSS_NOT_FINITE = (
    "The loss is NaN/Inf for this batch, whose inputs, teacher tensors and student BatchNorm statistics are "
    "finite, so the step was not applied: the student's tensors overflow float32 (scale or normalize the "
    "inputs) or its weights diverged (lower the learning rate)."
)
# The status a JAX step logs under this key: -1, or the index of the first failed check (`Distiller._guards`).
STATUS = "_rkd_keras_status"


def teacher_not_finite(origin, source):
    return (
        f"The teacher produced NaN/Inf embeddings for this batch, whose inputs are finite; check {origin}. "
        f"Tensor: {source}."
    )


def statistic_not_finite(variable):
    layer = variable.path.rsplit("/", 1)[0]
    return (
        f"The student's BatchNorm statistic {variable.name!r} of layer {layer!r} became NaN/Inf in this step, "
        "whose inputs are finite, so the weights were not updated: the activations reaching that layer overflow "
        "float32 (scale or normalize the inputs, e.g. to [0, 1]) or the weights before it diverged (lower the "
        "learning rate)."
    )


TEACHER_ORIGIN = "its weights (was it trained to NaN?)"
CACHED_ORIGIN = "the cached tensors (recompute them with cache_teacher_embeddings)"
GIVEN_ORIGIN = "the teacher embeddings given with the batch (recompute them; read_embeddings refuses a non-finite row)"


def is_float(tensor):
    return "float" in keras.backend.standardize_dtype(tensor.dtype)

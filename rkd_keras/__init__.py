"""rkd_keras: Relational Knowledge Distillation (Park et al., CVPR 2019) and its relatives for Keras 3, on TensorFlow, JAX and PyTorch.

The public names below resolve when first used (PEP 562), so optional parts
load only when asked for: `rkd_keras.tuning` imports keras-tuner, the command
line's reports import matplotlib, and `import rkd_keras` imports neither (Keras
3.15 itself imports matplotlib when it is installed, for its image gallery).
"""

import importlib
import re
import sys
from pathlib import Path

# Public name → module that defines it.
_PUBLIC = {
    "Distiller": "rkd_keras.distiller",
    "Term": "rkd_keras.terms",
    "TermWarmup": "rkd_keras.distiller",
    "rkd_distance": "rkd_keras.losses",
    "rkd_angle": "rkd_keras.losses",
    "RKDDistance": "rkd_keras.losses",
    "RKDAngle": "rkd_keras.losses",
    "triplet_loss": "rkd_keras.losses",
    "TripletLoss": "rkd_keras.losses",
    "prototypical_loss": "rkd_keras.losses",
    "PrototypicalLoss": "rkd_keras.losses",
    "fitnet": "rkd_keras.losses",
    "FitNet": "rkd_keras.losses",
    "hinton_kd": "rkd_keras.losses",
    "HintonKD": "rkd_keras.losses",
    "dist_kd": "rkd_keras.losses",
    "DistKD": "rkd_keras.losses",
    "dkd": "rkd_keras.losses",
    "DKD": "rkd_keras.losses",
    "relaxed_contrastive": "rkd_keras.losses",
    "RelaxedContrastive": "rkd_keras.losses",
    "attention_transfer": "rkd_keras.losses",
    "AttentionTransfer": "rkd_keras.losses",
    "similarity_preserving": "rkd_keras.losses",
    "SimilarityPreserving": "rkd_keras.losses",
    "pkt": "rkd_keras.losses",
    "PKT": "rkd_keras.losses",
    "correlation_congruence": "rkd_keras.losses",
    "CorrelationCongruence": "rkd_keras.losses",
    "dark_rank": "rkd_keras.losses",
    "DarkRank": "rkd_keras.losses",
    "load_dataset": "rkd_keras.data",
    "num_classes": "rkd_keras.data",
    "image_paths": "rkd_keras.data",
    "write_embeddings": "rkd_keras.embedding_files",
    "read_embeddings": "rkd_keras.embedding_files",
    "with_teacher_embeddings": "rkd_keras.embedding_files",
    "pk_batches": "rkd_keras.data",
    "DatasetNotAvailableError": "rkd_keras.data",
    "embedding_model": "rkd_keras.models",
    "classifier_model": "rkd_keras.models",
    "WeightsNotAvailableError": "rkd_keras.models",
    "embed": "rkd_keras.retrieval",
    "embed_with_gallery": "rkd_keras.retrieval",
    "recall_at_k": "rkd_keras.retrieval",
    "map_at_r": "rkd_keras.retrieval",
    "r_precision": "rkd_keras.retrieval",
    "few_shot_accuracy": "rkd_keras.retrieval",
    "FewShotAccuracy": "rkd_keras.retrieval",
    "nearest_neighbours": "rkd_keras.retrieval",
    "RetrievalRecall": "rkd_keras.retrieval",
    "export_student": "rkd_keras.export",
    "load_student": "rkd_keras.export",
    "check_export": "rkd_keras.export",
    "ExportMismatchError": "rkd_keras.export",
    "RKDHyperModel": "rkd_keras.tuning",
    "search_loss_weights": "rkd_keras.tuning",
}
_SUBMODULES = ("data", "embedding_files", "models", "losses", "terms", "distiller", "retrieval", "export", "tuning", "presets", "recipes", "choices")
# Importing these registers rkd_keras's layers, losses and models with Keras,
# which `keras.models.load_model` needs to read `rkd_keras>Distiller` & co.
_REGISTERING = ("models", "losses", "distiller")

__all__ = [*_SUBMODULES, *_PUBLIC]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})


def _starting_command_line() -> bool:
    """Whether Python is starting rkd-keras's command line, rather than a program importing rkd_keras.

    True for the `rkd-keras` console script (its `sys.argv[0]`, with the
    `.exe` / `-script.py` of Windows launchers removed as pip's script does),
    and for `python -m rkd_keras`, during whose package import `sys.argv[0]`
    is `"-m"` and `sys.orig_argv` names the module. The command line then
    parses its flags before TensorFlow is imported, and imports the library
    itself.
    """
    script = sys.argv[0] if sys.argv else ""
    if re.sub(r"(-script\.pyw?|\.exe)$", "", Path(script).name) == "rkd-keras":
        return True
    if script != "-m":
        return False
    argv = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(argv):
        if arg == "-m":
            return argv[i + 1 : i + 2] == [__name__]
        if arg.startswith("-m"):
            return arg[2:] == __name__
    return False


if not _starting_command_line():
    # A program that imports rkd_keras and then loads a `.keras` file needs
    # the classes registered, whether or not it touched a name above.
    for _module in _REGISTERING:
        importlib.import_module(f"{__name__}.{_module}")

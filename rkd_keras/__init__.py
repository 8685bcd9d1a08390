"""rkd_keras: Relational Knowledge Distillation (Park et al., CVPR 2019) for Keras 3 / TensorFlow."""

from rkd_keras import data, export, losses, models, retrieval, tuning
from rkd_keras.data import DatasetNotAvailableError, load_dataset, pk_batches
from rkd_keras.distiller import Distiller
from rkd_keras.export import export_student, load_student
from rkd_keras.losses import RKDAngle, RKDDistance, TripletLoss, rkd_angle, rkd_distance, triplet_loss
from rkd_keras.losses import PKT, AttentionTransfer, CorrelationCongruence, DarkRank, DistKD, HintonKD, SimilarityPreserving, attention_transfer, correlation_congruence, dark_rank, dist_kd, hinton_kd, pkt, similarity_preserving
from rkd_keras.models import embedding_model
from rkd_keras.retrieval import RetrievalRecall, map_at_r, r_precision, recall_at_k
from rkd_keras.terms import Term
from rkd_keras.tuning import RKDHyperModel, search_loss_weights

__all__ = [
    "Distiller",
    "Term",
    "losses",
    "rkd_distance",
    "rkd_angle",
    "RKDDistance",
    "RKDAngle",
    "triplet_loss",
    "TripletLoss",
    "hinton_kd", "HintonKD", "dist_kd", "DistKD", "attention_transfer", "AttentionTransfer", "similarity_preserving", "SimilarityPreserving", "pkt", "PKT", "correlation_congruence", "CorrelationCongruence", "dark_rank", "DarkRank",
    "data",
    "load_dataset",
    "pk_batches",
    "DatasetNotAvailableError",
    "models",
    "embedding_model",
    "retrieval",
    "recall_at_k",
    "map_at_r",
    "r_precision",
    "RetrievalRecall",
    "export",
    "export_student",
    "load_student",
    "tuning",
    "RKDHyperModel",
    "search_loss_weights",
]

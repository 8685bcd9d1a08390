"""keras-tuner search of the RKD loss weights on validation Recall@1."""

import keras
import keras_tuner

from rkd_keras.distiller import Distiller
from rkd_keras.retrieval import RetrievalRecall

OBJECTIVE = keras_tuner.Objective("val_recall_at_1", direction="max")
TUNERS = {
    "random": keras_tuner.RandomSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "hyperband": keras_tuner.Hyperband,
}


class _TrialDistiller(Distiller):
    """keras-tuner checkpoints each trial with `save_weights`/`load_weights`:
    those hold the student alone, not copies of the shared, frozen teacher."""

    def save_weights(self, filepath, *args, **kwargs):
        self.student.save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        self.student.load_weights(filepath, *args, **kwargs)


class RKDHyperModel(keras_tuner.HyperModel):
    """Distillers of one frozen teacher, with searched loss weights.

    Searched: which RKD terms are on (`"terms"`: distance, angle or both, so a
    term can be turned off), their weights (log-uniform), the learning rate,
    and optionally the task-loss weight and the student's L2 normalization.
    The teacher is built once by the caller and shared by every trial; only
    the student is built anew.

    Args:
        teacher: The frozen teacher model, shared by all trials.
        student_factory: Callable returning a fresh student model; called
            with `l2_normalize=` when `tune_l2_normalize`.
        task_loss: Optional task loss of the student (e.g. `TripletLoss()`).
        distance_weight: `(min, max)` of λ_D.
        angle_weight: `(min, max)` of λ_A.
        learning_rate: `(min, max)` of Adam's learning rate.
        task_loss_weight: `(min, max)` searched when a task loss is given,
            or `None` to keep it at 1.
        tune_l2_normalize: Also search the student's L2 normalization.

    Example:
    ```python
    hypermodel = RKDHyperModel(teacher, lambda: embedding_model("small_cnn", 32, l2_normalize=False))
    ```
    """

    def __init__(
        self,
        teacher,
        student_factory,
        *,
        task_loss=None,
        distance_weight=(0.1, 100.0),
        angle_weight=(0.1, 100.0),
        learning_rate=(1e-4, 1e-2),
        task_loss_weight=None,
        tune_l2_normalize=False,
        name=None,
    ):
        super().__init__(name=name)
        self.teacher, self.student_factory, self.task_loss = teacher, student_factory, task_loss
        self.ranges = dict(distance_weight=distance_weight, angle_weight=angle_weight, learning_rate=learning_rate)
        self.task_loss_weight, self.tune_l2_normalize = task_loss_weight, tune_l2_normalize

    def build(self, hp):
        terms = hp.Choice("terms", ["distance", "angle", "both"], default="both")
        weights = {}
        for term in ("distance", "angle"):
            with hp.conditional_scope("terms", [term, "both"]):
                low, high = self.ranges[f"{term}_weight"]
                weights[f"{term}_weight"] = hp.Float(f"{term}_weight", low, high, sampling="log")
            if terms not in (term, "both"):
                weights[f"{term}_weight"] = 0.0
        task_loss_weight = 1.0
        if self.task_loss is not None and self.task_loss_weight is not None:
            task_loss_weight = hp.Float("task_loss_weight", *self.task_loss_weight, sampling="log")
        if self.tune_l2_normalize:
            student = self.student_factory(l2_normalize=hp.Boolean("l2_normalize", default=False))
        else:
            student = self.student_factory()
        distiller = _TrialDistiller(self.teacher, student, task_loss_weight=task_loss_weight, **weights)
        learning_rate = hp.Float("learning_rate", *self.ranges["learning_rate"], sampling="log")
        distiller.compile(keras.optimizers.Adam(learning_rate), loss=self.task_loss)
        return distiller


def _tuner_class(kind):
    if kind not in TUNERS:
        raise ValueError(f"Unknown tuner {kind!r}; choose one of {', '.join(TUNERS)}.")
    return TUNERS[kind]


def search_loss_weights(
    hypermodel: RKDHyperModel,
    train_data,
    validation_data,
    *,
    tuner: str = "random",
    max_trials: int = 10,
    epochs: int = 5,
    directory: str = "tuning",
    project_name: str = "rkd",
    overwrite: bool = True,
    ks=(1, 2, 4, 8),
    callbacks=(),
    verbose: int = 1,
    **tuner_kwargs,
):
    """Searches the RKD loss weights for the best validation Recall@1.

    `RetrievalRecall(validation_data)` is attached before the tuner's own
    callbacks, so the objective `val_recall_at_1` is in the logs they read.
    Select on a validation split of the training classes, not on test classes.

    Args:
        hypermodel: An `RKDHyperModel`.
        train_data: What `fit` takes, e.g. `pk_batches(...)`.
        validation_data: `(images, labels)` or a batched dataset, for Recall@K.
        tuner: `"random"`, `"bayesian"` or `"hyperband"`.
        max_trials: Trials (Hyperband: `max_epochs` is set to `epochs`).
        epochs: Epochs per trial.
        directory: As in keras-tuner.
        project_name: As in keras-tuner.
        overwrite: As in keras-tuner, but True by default: keras-tuner would
            otherwise silently reload an old search of the same name.
        ks: The K of Recall@K logged each epoch.
        callbacks: More callbacks, run after `RetrievalRecall`.
        verbose: keras-tuner verbosity.
        **tuner_kwargs: Other arguments of the keras-tuner class.

    Returns:
        `(best_hyperparameters, best_student, tuner)`.

    Raises:
        RuntimeError: no trial completed; the message holds their errors.
    """
    tuner_class = _tuner_class(tuner)
    budget = {"max_epochs": epochs} if tuner == "hyperband" else {"max_trials": max_trials}
    search = tuner_class(
        hypermodel, objective=OBJECTIVE, directory=directory, project_name=project_name,
        overwrite=overwrite, **budget, **tuner_kwargs,
    )
    recall = RetrievalRecall(validation_data, ks)
    fit_epochs = {} if tuner == "hyperband" else {"epochs": epochs}
    search.search(train_data, callbacks=[recall, *callbacks], verbose=verbose, **fit_epochs)
    trials = list(search.oracle.trials.values())
    completed = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        errors = "; ".join(f"trial {t.trial_id} {t.status}: {_last_line(t.message)}" for t in trials)
        raise RuntimeError(f"No trial of the search completed, so there is no best model. {errors}")
    best_hp = search.get_best_hyperparameters(1)[0]
    best_student = search.get_best_models(1)[0].student
    return best_hp, best_student, search


def _last_line(message):
    lines = (message or "no message").strip().splitlines()
    return lines[-1] if lines else "no message"

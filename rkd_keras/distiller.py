"""`Distiller`: trains a student from a frozen teacher with RKD, via `fit`."""

import math

import keras
import tensorflow as tf

from rkd_keras.losses import _PACKAGE, rkd_angle, rkd_distance


def _check_weight(name, value):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0 (0 turns the term off), "
            f"received {value}."
        )
    return value


def _check_model(role, model):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"The {role} must be a Keras model or layer, received "
            f"{type(model).__name__}. Wrap plain functions in a "
            "`keras.layers.Lambda` or a functional `keras.Model`."
        )
    return model


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a `keras.losses.Loss`, so it takes sample weights."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "task_loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Distiller(keras.Model):
    """Relational Knowledge Distillation of a frozen teacher into a student.

    The student is trained on
    `task_loss_weight · task + distance_weight · RKD-D + angle_weight · RKD-A`,
    where the RKD terms compare the relations inside each batch between the
    teacher's and the student's embeddings, so their widths may differ (a
    512-d teacher can teach a 64-d student). The task loss is the loss given to
    `compile`, on `(y, student outputs)`; the paper's metric-learning students
    use none. Terms whose weight is 0 are not computed.

    The teacher is frozen: it runs with `training=False` (BatchNorm statistics
    untouched) and only the student's weights receive gradients.

    Args:
        teacher: A Keras model producing teacher embeddings `(N, ...)`.
        student: A Keras model producing student embeddings `(N, ...)`.
        distance_weight: λ_D, weight of the distance-wise loss. The paper's
            metric-learning setting is 1.
        angle_weight: λ_A, weight of the angle-wise loss. The paper's
            metric-learning setting is 2.
        task_loss_weight: Weight of the compiled task loss, if any.
        name: Name of the model.

    Example:
    ```python
    distiller = rkd_keras.Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    distiller.fit(images, epochs=10)   # no labels: RKD only, as in the paper
    embeddings = distiller.student.predict(test_images)
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        *,
        distance_weight: float = 1.0,
        angle_weight: float = 2.0,
        task_loss_weight: float = 1.0,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.teacher = _check_model("teacher", teacher)
        self.student = _check_model("student", student)
        self.teacher.trainable = False
        # Functional models are built at construction, and so is the Distiller.
        self.built = teacher.built and student.built
        self.distance_weight = _check_weight("distance_weight", distance_weight)
        self.angle_weight = _check_weight("angle_weight", angle_weight)
        self.task_loss_weight = _check_weight("task_loss_weight", task_loss_weight)
        self.task_loss = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distance_tracker = keras.metrics.Mean(name="rkd_distance")
        self.angle_tracker = keras.metrics.Mean(name="rkd_angle")

    def build(self, input_shape):
        for model in (self.teacher, self.student):
            if not model.built:
                model.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures the student's training.

        Args:
            optimizer: Optimizer for the student's weights.
            loss: Optional task loss of the student, on `(y, student outputs)`:
                a `keras.losses.Loss`, a loss function or its name. Leave it
                `None` to train with the RKD terms alone.
            metrics: Metrics on `(y, student outputs)`, as in `Model.compile`.
            **kwargs: Other `Model.compile` arguments (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...).
        """
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self.task_loss = None
        if loss is not None and self.task_loss_weight > 0:
            loss = keras.losses.get(loss)
            # A bare function takes no sample weights; the Loss API does.
            self.task_loss = (
                loss if isinstance(loss, keras.losses.Loss) else _FunctionLoss(loss)
            )
        if self.task_loss is None and not (self.distance_weight or self.angle_weight):
            raise ValueError(
                "Nothing to train: distance_weight and angle_weight are 0 and no "
                "task loss is compiled. Give a weight > 0 or pass `loss=`."
            )

    @property
    def metrics(self):
        trackers = [self.loss_tracker]
        if self.task_loss is not None:
            trackers.append(self.task_loss_tracker)
        if self.distance_weight:
            trackers.append(self.distance_tracker)
        if self.angle_weight:
            trackers.append(self.angle_tracker)
        if self._compile_metrics is not None:
            trackers.append(self._compile_metrics)
        return trackers

    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        needs_labels = self.task_loss is not None or self._compile_metrics is not None
        if needs_labels and y is None:
            raise ValueError(
                "A task loss or metrics were compiled, so the data must be "
                "(x, y) pairs, but received inputs without labels. Pass labels "
                "to fit/evaluate, or compile without `loss=`/`metrics=` to "
                "train with RKD alone."
            )
        return x, y, sample_weight

    def _compute_terms(self, x, y, sample_weight, training):
        """Student outputs, the weighted total loss and each unweighted term."""
        teacher_embeddings = tf.stop_gradient(self.teacher(x, training=False))
        student_embeddings = self.student(x, training=training)
        terms = {}
        if self.task_loss is not None:
            terms["task_loss"] = (
                self.task_loss_weight,
                self.task_loss(y, student_embeddings, sample_weight=sample_weight),
            )
        if self.distance_weight:
            terms["rkd_distance"] = (
                self.distance_weight,
                rkd_distance(teacher_embeddings, student_embeddings),
            )
        if self.angle_weight:
            terms["rkd_angle"] = (
                self.angle_weight,
                rkd_angle(teacher_embeddings, student_embeddings),
            )
        total = tf.add_n(
            [weight * tf.cast(term, tf.float32) for weight, term in terms.values()]
            # Weight decay and other regularization of the student, as in fit.
            + [tf.cast(loss, tf.float32) for loss in self.student.losses]
        )
        return student_embeddings, total, {k: v for k, (_, v) in terms.items()}

    def _update_metrics(self, x, y, sample_weight, student_embeddings, total, terms):
        self.loss_tracker.update_state(total)
        trackers = {
            "task_loss": self.task_loss_tracker,
            "rkd_distance": self.distance_tracker,
            "rkd_angle": self.angle_tracker,
        }
        for name, value in terms.items():
            trackers[name].update_state(value)
        if y is None:
            return self.get_metrics_result()
        return self.compute_metrics(x, y, student_embeddings, sample_weight=sample_weight)

    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        with tf.GradientTape() as tape:
            student_embeddings, total, terms = self._compute_terms(
                x, y, sample_weight, training=True
            )
            # Mixed precision: LossScaleOptimizer scales here, unscales in apply.
            scaled = self.optimizer.scale_loss(total)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(x, y, sample_weight, student_embeddings, total, terms)

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        student_embeddings, total, terms = self._compute_terms(
            x, y, sample_weight, training=False
        )
        return self._update_metrics(x, y, sample_weight, student_embeddings, total, terms)

    def get_config(self):
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
            "task_loss_weight": self.task_loss_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        return cls(**config)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.student.built:
            # Create the slots now, so the saved optimizer state loads into them.
            self.optimizer.build(self.student.trainable_variables)

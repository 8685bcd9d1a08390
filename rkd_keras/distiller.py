"""`Distiller`: trains a student from a frozen teacher with RKD, via `fit`."""

import math

import keras
import tensorflow as tf

from rkd_keras.data import materialize
from rkd_keras.losses import rkd_angle, rkd_distance
from rkd_keras.saving import register


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


def _check_teacher(teacher):
    teacher = _check_model("teacher", teacher)
    if not teacher.built:
        # Building it here would give fresh random weights: nothing to learn from.
        raise ValueError(
            f"The teacher {teacher.name!r} is not built, so it holds no trained "
            "weights. Pass the trained teacher (e.g. `keras.models.load_model(path)`), "
            "or build and train it before distilling."
        )
    return teacher


def _global_batch(embeddings):
    """The embeddings of every replica's batch, with gradient only to this replica's rows.

    Outside a `tf.distribute` replica context (or with one replica) this is
    `embeddings` itself. Other replicas' rows are constants here; their own
    replicas differentiate them, so the gradients summed over replicas equal
    the gradient of the global-batch loss.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return embeddings
    embeddings = tf.reshape(embeddings, [tf.shape(embeddings)[0], -1])  # the losses flatten anyway
    # One collective: each row carries its replica's index, which locates
    # this replica's rows even when the replicas' batch sizes differ.
    replica = tf.cast(context.replica_id_in_sync_group, embeddings.dtype)
    tagged = tf.concat([tf.stop_gradient(embeddings), tf.fill([tf.shape(embeddings)[0], 1], replica)], axis=1)
    gathered = context.all_gather(tagged, axis=0)
    start = tf.reduce_sum(tf.cast(gathered[:, -1] < replica, tf.int32))
    end = start + tf.shape(embeddings)[0]
    gathered = gathered[:, :-1]
    return tf.concat([gathered[:start], embeddings, gathered[end:]], axis=0)


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


TEACHER_EMBEDDINGS = "teacher_embeddings"


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a `keras.losses.Loss`, so it takes sample weights."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "task_loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _split_cached(x):
    """`(inputs, teacher embeddings or None)` of a batch from `cache_teacher_embeddings`."""
    if isinstance(x, dict) and set(x) == {"inputs", TEACHER_EMBEDDINGS}:
        return x["inputs"], x[TEACHER_EMBEDDINGS]
    return x, None


@register
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
        global_batch_relations: Under a `tf.distribute` strategy, gather
            every replica's embeddings so the RKD terms see the global batch,
            exactly as on one device (the paper's relations). `False`
            computes them per replica (cheaper, but with 8 replicas each sees
            1/8 of the batch).
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
        global_batch_relations: bool = True,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.teacher = _check_teacher(teacher)
        self.student = _check_model("student", student)
        self.teacher.trainable = False
        # Functional models are built at construction, and so is the Distiller.
        self.built = student.built
        self.distance_weight = _check_weight("distance_weight", distance_weight)
        self.angle_weight = _check_weight("angle_weight", angle_weight)
        self.task_loss_weight = _check_weight("task_loss_weight", task_loss_weight)
        self.global_batch_relations = bool(global_batch_relations)
        self.task_loss = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distance_tracker = keras.metrics.Mean(name="rkd_distance")
        self.angle_tracker = keras.metrics.Mean(name="rkd_angle")

    def build(self, input_shape):
        if isinstance(input_shape, dict) and "inputs" in input_shape:
            input_shape = input_shape["inputs"]
        if not self.student.built:
            self.student.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.student(_split_cached(inputs)[0], training=training)

    def cache_teacher_embeddings(self, data, batch_size: int = 256):
        """Runs the teacher once over `data`, so `fit` reuses its embeddings.

        The teacher is frozen and deterministic, so when the inputs carry no
        random augmentation its embeddings are the same every epoch; caching
        them saves the teacher's forward pass on every step after the first
        pass (a large teacher costs more than the student's whole step).
        The result trains exactly as `data` would.

        Args:
            data: Inputs `x` (array or tensor), or a finite `tf.data.Dataset`
                of unbatched `(x, y)` examples (the input of `pk_batches`).
                Apply random augmentation only to data you do not cache.
            batch_size: Batch size of the teacher's pass.

        Returns:
            For `x`: `{"inputs": x, "teacher_embeddings": ...}`, to pass to
            `fit` as `x`. For a dataset: a dataset of such dicts and `y`.

        Example:
        ```python
        cached = distiller.cache_teacher_embeddings(train_images)
        distiller.fit(cached, epochs=10, batch_size=128)
        ```
        """
        if isinstance(data, tf.data.Dataset):
            inputs, labels = materialize(data, "cache_teacher_embeddings")
            cached = self.cache_teacher_embeddings(inputs, batch_size)
            return tf.data.Dataset.from_tensor_slices((cached, labels))
        embeddings = self.teacher.predict(data, batch_size=batch_size, verbose=0)
        return {"inputs": data, TEACHER_EMBEDDINGS: embeddings}

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

    def _teacher_embeddings(self, x, cached):
        embeddings = self.teacher(x, training=False) if cached is None else cached
        # Cheap (one reduction) and caught here, not as a NaN student later.
        return tf.stop_gradient(
            tf.debugging.assert_all_finite(
                embeddings,
                "The teacher produced NaN/Inf embeddings for this batch; check its "
                "weights (was it trained to NaN?) and the inputs (NaN pixels?).",
            )
        )

    def _compute_terms(self, x, y, sample_weight, training):
        """Student outputs, the loss to differentiate, and each unweighted term.

        Under a `tf.distribute` strategy the returned loss is this replica's
        share, as Keras's own `train_step` uses: gradients are summed over
        replicas. The terms are the values to report.
        """
        x, cached = _split_cached(x)
        teacher_embeddings = self._teacher_embeddings(x, cached)
        student_embeddings = self.student(x, training=training)
        replicas = _replicas()
        relations = [teacher_embeddings, student_embeddings]
        # Global-batch relations: each replica's gradient is already its share
        # of the global loss's gradient. Per-replica ones are averaged, as
        # Keras averages per-replica losses.
        relation_scale = 1.0
        if self.global_batch_relations:
            relations = [_global_batch(e) for e in relations]
        else:
            relation_scale = 1.0 / replicas
        terms, losses = {}, []
        if self.task_loss is not None:
            # Keras losses already divide by the number of replicas.
            task = self.task_loss(y, student_embeddings, sample_weight=sample_weight)
            losses.append(self.task_loss_weight * tf.cast(task, tf.float32))
            terms["task_loss"] = task * replicas
        for name, weight, fn in (
            ("rkd_distance", self.distance_weight, rkd_distance),
            ("rkd_angle", self.angle_weight, rkd_angle),
        ):
            if weight:
                terms[name] = fn(*relations)
                losses.append(weight * relation_scale * terms[name])
        # Weight decay and other regularization of the student, as in fit.
        losses += [tf.cast(loss, tf.float32) / replicas for loss in self.student.losses]
        total = tf.add_n(losses)
        return student_embeddings, total, terms

    def _update_metrics(self, x, y, sample_weight, student_embeddings, terms):
        total = tf.add_n(
            [self._weight(name) * tf.cast(value, tf.float32) for name, value in terms.items()]
            + [tf.cast(loss, tf.float32) for loss in self.student.losses]
        )
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
        return self.compute_metrics(_split_cached(x)[0], y, student_embeddings, sample_weight=sample_weight)

    def _weight(self, term):
        return {
            "task_loss": self.task_loss_weight,
            "rkd_distance": self.distance_weight,
            "rkd_angle": self.angle_weight,
        }[term]

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
        return self._update_metrics(x, y, sample_weight, student_embeddings, terms)

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        student_embeddings, _, terms = self._compute_terms(x, y, sample_weight, training=False)
        return self._update_metrics(x, y, sample_weight, student_embeddings, terms)

    def get_config(self):
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
            "task_loss_weight": self.task_loss_weight,
            "global_batch_relations": self.global_batch_relations,
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

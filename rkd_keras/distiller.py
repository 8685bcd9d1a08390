"""`Distiller`: trains a student from a frozen teacher on a list of distillation terms, via `fit`; `TermWarmup`
ramps terms' weights up over the first epochs."""

import functools
import operator
import re
import sys

import keras

from rkd_keras import checks, steps
from rkd_keras.losses import HintRegressor
from rkd_keras.saving import register
from rkd_keras.steps.finite import (
    CACHED_ORIGIN,
    GIVEN_ORIGIN,
    INPUTS_NOT_FINITE,
    LOSS_NOT_FINITE,
    TEACHER_ORIGIN,
    is_float,
    statistic_not_finite,
    teacher_not_finite,
)
from rkd_keras.terms import INPUTS, Extractor, Term, cached_inputs, check_cached_rows, check_weight, split_cached

# `Distiller(teacher, student)`: the paper's metric-learning setting, λ_D = 1 and λ_A = 2.
DEFAULT_WEIGHTS = {"distance_weight": 1.0, "angle_weight": 2.0}
_SHORTCUT_LOSSES = {"distance_weight": "rkd_distance", "angle_weight": "rkd_angle"}


def _check_model(role, model):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"The {role} must be a Keras model or layer, received "
            f"{type(model).__name__}. Wrap plain functions in a "
            "`keras.layers.Lambda` or a functional `keras.Model`."
        )
    return model


def _check_teacher(teacher):
    if teacher is None:
        return None  # its embeddings come with every batch
    teacher = _check_model("teacher", teacher)
    if not teacher.built:
        # Building it here would give fresh random weights: nothing to learn from.
        raise ValueError(
            f"The teacher {teacher.name!r} is not built, so it holds no trained "
            "weights. Pass the trained teacher (e.g. `keras.models.load_model(path)`), "
            "or build and train it before distilling."
        )
    return teacher


def _check_distinct(teacher, student):
    """Freezing the teacher would freeze whatever the student shares with it."""
    if teacher is student:
        raise ValueError(
            f"The teacher and the student are the same model ({student.name!r}). Distil into a "
            "separate student: build a new one, or `keras.models.clone_model(teacher)` for a copy."
        )
    teacher_variables = {id(v) for v in teacher.weights}
    shared = [v.path for v in student.weights if id(v) in teacher_variables]
    if shared:
        raise ValueError(
            f"The student {student.name!r} shares {len(shared)} weights with the teacher "
            f"{teacher.name!r} (e.g. {shared[0]!r}); freezing the teacher would freeze them in the "
            "student too. Build the student from its own layers, or copy the teacher's with "
            "`keras.models.clone_model`."
        )


def _check_trainable(student):
    """A student without trainable weights would "train" without changing (TensorFlow fails obscurely)."""
    if not student.built or student.trainable_weights:
        return  # an unbuilt (subclassed) student gets its weights in its first step
    if not student.weights:
        raise ValueError(f"The student {student.name!r} has no weights, so distilling would change nothing.")
    if not student.trainable:
        raise ValueError(
            f"The student {student.name!r} has no trainable weights: student.trainable is False, so distilling "
            "would change nothing. Set `student.trainable = True`."
        )
    # Keras sets a model's flag on its layers only when the flag changes: a clone of a frozen teacher has
    # trainable=True and frozen layers, and `clone.trainable = True` unfreezes none of them.
    raise ValueError(
        f"The student {student.name!r} has no trainable weights: its layers are frozen (trainable=False), as in a "
        "keras.models.clone_model of a teacher that a Distiller froze, so distilling would change nothing. "
        "Unfreeze them (`for layer in student.layers: layer.trainable = True`), or clone the teacher before "
        "distilling it."
    )


def _check_terms(terms):
    terms = list(terms)
    for term in terms:
        if not isinstance(term, Term):
            raise TypeError(
                f"`terms` must hold rkd_keras.Term objects, received {type(term).__name__} "
                f"({term!r}). Write e.g. Term('rkd_angle', weight=2.0)."
            )
    checks.check_term_names(term.name for term in terms)  # `Term` checked each name on its own
    return terms


def _metric_names(metrics, weighted_metrics):
    """The keys under which Keras logs the metrics compiled for a single-output model.

    As Keras's `CompileMetrics.result`: a metric given as a string is logged
    under that string, an object under its `name`, a function under its
    snake_case `__name__`; a name met again gets `_1`, `_2`, ... (a weighted
    metric first `weighted_`). Lists and dicts are flattened.
    """
    names = []
    for prefix, given in (("", metrics), ("weighted_", weighted_metrics)):
        for metric in keras.tree.flatten(given) if given is not None else []:
            if isinstance(metric, str):
                name = metric
            else:
                metric = keras.metrics.get(metric)
                name = getattr(metric, "name", None) or _snake_case(getattr(metric, "__name__", type(metric).__name__))
            if name in names and prefix:
                name = prefix + name
            base, index = name, 1
            while name in names:
                name, index = f"{base}_{index}", index + 1
            names.append(name)
    return names


def _snake_case(name):
    """Keras's snake_case of a function's or class's name (how it names metrics given as functions)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _specs(term, teacher, student):
    """The symbolic tensors a term compares and how messages name them, from the two extractors."""
    teacher_key, student_key = teacher.keys[term.name], student.keys[term.name]
    specs = teacher.specs[teacher_key], student.specs[student_key]
    return (*specs, teacher.sources[teacher_key], student.sources[student_key])


def _regressor(term, teacher, student):
    """FitNet's regressor of a term, built on the student tensor's shape so that it can be saved."""
    if teacher.precomputed:
        raise ValueError(
            f"Term {term.name!r} learns a regressor from the student's tensor to the teacher's width, which a "
            "Distiller without a teacher model does not know when it is built (its embeddings come with the "
            "batches). Distil from the teacher model for FitNet, or use a relational term (e.g. rkd_distance)."
        )
    teacher, student, teacher_source, student_source = _specs(term, teacher, student)
    if teacher is None or student is None or student.shape[-1] is None or teacher.shape[-1] is None:
        raise ValueError(
            f"Term {term.name!r} learns a regressor from {student_source} to {teacher_source}, "
            "which needs both tensors' channels when the Distiller is built; build the models "
            "with the functional API."
        )
    regressor = HintRegressor(teacher.shape[-1], name=f"{term.name}_regressor")
    regressor.build(student.shape)
    return regressor


def _check_shapes(term, teacher, student):
    teacher, student, teacher_source, student_source = _specs(term, teacher, student)
    if teacher is None or student is None:
        return  # a subclassed model's output: its shape is known only when it runs
    if term.uses_regressor:
        # The regressor maps the student's channels to the teacher's.
        student = keras.KerasTensor((*student.shape[:-1], teacher.shape[-1]), student.dtype)
        student_source = f"{student_source} (through its regressor)"
    term.check_shapes(teacher, student, teacher_source, student_source)



def _check_cached_shape(tensor, spec, source):
    """Cached teacher tensors must have the shape the teacher gives now (checked when the step is traced)."""
    if spec is None:
        return  # a subclassed teacher's output: its shape is known only when it runs
    cached, expected = tuple(tensor.shape[1:]), tuple(spec.shape[1:])
    if len(cached) == len(expected) and all(c is None or e is None or c == e for c, e in zip(cached, expected)):
        return

    def size(shape):
        return f"width {shape[0]}" if len(shape) == 1 else f"shape {shape} per example"

    raise ValueError(
        f"The cached teacher tensors of {source} have {size(cached)}, but {source} has {size(expected)}: "
        "they were cached from another teacher or layer. Cache them again with this Distiller's "
        "cache_teacher_embeddings."
    )


def _load_optimizer(optimizer, unbuilt, store):
    """Loads `store` into `optimizer`, also when it was saved before its first step (the variables `unbuilt`)."""
    if len(store.keys()) == len(unbuilt) != len(optimizer.variables):
        for i, variable in enumerate(unbuilt):
            variable.assign(store[str(i)])
        return
    type(optimizer).load_own_variables(optimizer, store)


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a `keras.losses.Loss`, so it takes sample weights."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "task_loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


@register
class Distiller(steps.for_backend(), keras.Model):
    """Knowledge distillation of a frozen teacher into a student, on a list of terms.

    The student is trained on
    `task_loss_weight · task + Σ_terms weight · loss(teacher tensor, student tensor)`
    plus the student's own regularization losses. Each `Term` compares a
    tensor of the teacher with one of the student: the models' outputs, or
    named layers of functional models. `Distiller(teacher, student)` is the
    paper's relational distillation: RKD-D with weight 1 and RKD-A with
    weight 2 on the outputs (`distance_weight` and `angle_weight` set those
    two weights). The task loss is the loss given to `compile`, on
    `(y, student output)`; the paper's metric-learning students use none.

    Relational terms (RKD-D, RKD-A, DarkRank, similarity preserving, PKT,
    correlation congruence, DIST) compare relations across the batch, so the
    teacher's and the student's widths may differ (a 512-d teacher can teach
    a 64-d student). Per-example terms (Hinton's KD, FitNet, attention
    transfer) compare each example on its own; FitNet's student tensor passes
    through a `HintRegressor` that trains with the student, is saved with the
    Distiller, and is never part of the exported student.

    Each model runs once per step, however many terms read it. The teacher
    is frozen: it runs with `training=False` (BatchNorm statistics untouched)
    and only the student's weights (and the FitNet regressors) receive
    gradients. The logs hold `loss` (the optimised total), each term under
    its name, and `task_loss`; terms whose weight is 0 are not computed.

    Without a teacher model (`teacher=None`), every batch carries the
    teacher's embeddings, `{"inputs": x, "teacher_embeddings": rows}`, as
    `cache_teacher_embeddings` gives them: embeddings of a teacher from any
    framework, read from a file (`rkd_keras.read_embeddings`,
    `rkd_keras.with_teacher_embeddings`). The terms then compare the
    teacher's output only: a term reading a teacher layer, or FitNet (whose
    regressor needs the teacher's width when the Distiller is built), is
    refused.

    Args:
        teacher: A trained Keras model, or `None`: its embeddings come with
            every batch.
        student: A Keras model taking the same inputs.
        terms: A list of `Term`s. Default: RKD-D and RKD-A on the outputs,
            with `distance_weight` and `angle_weight`.
        distance_weight: λ_D of the default terms (1 if not given; 0 drops
            RKD-D). Not allowed with `terms`.
        angle_weight: λ_A of the default terms (2 if not given; 0 drops
            RKD-A). Not allowed with `terms`.
        task_loss_weight: Weight of the compiled task loss, if any.
        global_batch_relations: Under a `tf.distribute` strategy, gather the
            tensors of relational terms from every replica, so they see the
            global batch exactly as on one device (the paper's relations).
            `False` computes them per replica (cheaper, but with 8 replicas
            each sees 1/8 of the batch). Per-example terms are computed on
            each replica's batch and averaged, as Keras averages its losses.
        name: Name of the model.

    Example:
    ```python
    distiller = rkd_keras.Distiller(teacher, student)   # RKD-D + 2 · RKD-A on the outputs
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    distiller.fit(images, epochs=10)                    # no labels: RKD only, as in the paper

    distiller = rkd_keras.Distiller(teacher, student, terms=[
        rkd_keras.Term("hinton_kd", weight=1.0),        # on the logits (the outputs)
        rkd_keras.Term("rkd_distance", 25.0, teacher_layer="pool", student_layer="pool"),
        rkd_keras.Term("rkd_angle", 50.0, teacher_layer="pool", student_layer="pool"),
    ])
    distiller.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        *,
        terms=None,
        distance_weight: float | None = None,
        angle_weight: float | None = None,
        task_loss_weight: float = 1.0,
        global_batch_relations: bool = True,
        name: str = "distiller",
        **kwargs,
    ):
        teacher = _check_teacher(teacher)
        student = _check_model("student", student)
        if teacher is not None:
            _check_distinct(teacher, student)
        _check_trainable(student)
        global_batch_relations = checks.check_bool("`global_batch_relations`", global_batch_relations)
        shortcuts = {"distance_weight": distance_weight, "angle_weight": angle_weight}
        given = [key for key, value in shortcuts.items() if value is not None]
        if terms is not None and given:
            raise ValueError(
                f"Pass either `terms` or {' and '.join(f'`{key}`' for key in given)}, not both: the "
                "weights only set the default RKD terms. Add e.g. Term('rkd_angle', weight=2.0) to "
                "`terms` instead."
            )
        from_shortcuts = terms is None
        if from_shortcuts:
            shortcuts = {
                key: check_weight(key, DEFAULT_WEIGHTS[key] if value is None else value)
                for key, value in shortcuts.items()
            }
            terms = [Term(_SHORTCUT_LOSSES[key], value) for key, value in shortcuts.items()]
        terms = _check_terms(terms)
        task_loss_weight = check_weight("task_loss_weight", task_loss_weight)
        # Everything is checked before the teacher is frozen: a refused Distiller changes nothing.
        extractors = Extractor(teacher, "teacher", terms), Extractor(student, "student", terms, keep_output=True)
        active = [term for term in terms if term.weight > 0]
        regressors = [_regressor(term, *extractors) for term in active if term.uses_regressor]
        for term in terms:
            _check_shapes(term, *extractors)

        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        if teacher is not None:
            self.teacher.trainable = False
        # Functional models are built at construction, and so is the Distiller.
        self.built = student.built
        self.distance_weight = shortcuts["distance_weight"] if from_shortcuts else None
        self.angle_weight = shortcuts["angle_weight"] if from_shortcuts else None
        self.terms = terms
        self.task_loss_weight = task_loss_weight
        self.global_batch_relations = global_batch_relations
        self.task_loss = None
        self._teacher_extractor, self._student_extractor = extractors
        self._active_terms = active
        self.regressors = regressors
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.term_trackers = [keras.metrics.Mean(name=term.name) for term in active]

    def build(self, input_shape):
        if isinstance(input_shape, dict) and INPUTS in input_shape:
            input_shape = input_shape[INPUTS]
        if not self.student.built:
            self.student.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.student(split_cached(inputs)[0], training=training)

    def cache_teacher_embeddings(self, data, batch_size: int = 256):
        """Runs the teacher once over `data`, so `fit` reuses the tensors the terms read.

        The teacher is frozen and deterministic, so when the inputs carry no
        random augmentation its tensors are the same every epoch; caching
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
            `fit` as `x`; `teacher_embeddings` is the teacher's output when
            the terms read only that, else a dict from layer name to tensor
            (the output under the name of the layer producing it). For a
            dataset: a dataset of such dicts and `y`.

        Example:
        ```python
        cached = distiller.cache_teacher_embeddings(train_images)
        distiller.fit(cached, epochs=10, batch_size=128)
        ```
        """
        if self._teacher_extractor.precomputed:
            raise ValueError(
                "This Distiller has no teacher model to run: its batches carry the teacher's embeddings already "
                "(rkd_keras.with_teacher_embeddings); fit on them."
            )
        if self._teacher_extractor.model is None:
            raise ValueError("No term reads the teacher, so there is nothing to cache; fit on the data itself.")
        tensorflow = sys.modules.get("tensorflow")  # a tf.data.Dataset means TensorFlow is imported
        if tensorflow is not None and isinstance(data, tensorflow.data.Dataset):
            from rkd_keras.data import materialize

            inputs, labels = materialize(data, "cache_teacher_embeddings")
            cached = self.cache_teacher_embeddings(inputs, batch_size)
            return tensorflow.data.Dataset.from_tensor_slices((cached, labels))
        teacher = self._teacher_extractor
        return cached_inputs(data, teacher.predict(data, batch_size), teacher.output_key)

    def fit(self, x=None, *args, **kwargs):
        """`Model.fit`, after checking that a cached batch holds as many teacher rows as inputs."""
        check_cached_rows(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        """`Model.evaluate`, after checking that a cached batch holds as many teacher rows as inputs."""
        check_cached_rows(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`Model.predict` (the student's outputs), after checking that a cached batch holds as many teacher rows as inputs."""
        check_cached_rows(x)
        return super().predict(x, *args, **kwargs)

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures the student's training.

        Args:
            optimizer: Optimizer for the student's weights.
            loss: Optional task loss of the student, on `(y, student outputs)`:
                a `keras.losses.Loss`, a loss function or its name. Leave it
                `None` to train with the distillation terms alone.
            metrics: Metrics on `(y, student outputs)`, as in `Model.compile`.
            **kwargs: Other `Model.compile` arguments (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...).
        """
        if self._student_extractor.output_key is None and (loss is not None or metrics is not None):
            raise ValueError(
                f"The student {self.student.name!r} returns several outputs, but a task loss or metrics "
                "compare one output with the labels. Compile without "
                "`loss=`/`metrics=`, or give the student a single output."
            )
        _check_trainable(self.student)
        metric_names = _metric_names(metrics, kwargs.get("weighted_metrics"))
        for term in self.terms:
            if term.name in metric_names:
                raise ValueError(
                    f"Term {term.name!r} has the name of a compiled metric, and the logs hold one value per "
                    f"name: the metric's would replace the term's. Rename the term, e.g. "
                    f"Term(..., name='{term.name}_term')."
                )
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self.task_loss = None
        if loss is not None and self.task_loss_weight > 0:
            loss = keras.losses.get(loss)
            # A bare function takes no sample weights; the Loss API does.
            self.task_loss = (
                loss if isinstance(loss, keras.losses.Loss) else _FunctionLoss(loss)
            )
        if self.task_loss is None and not self._active_terms:
            raise ValueError(
                "Nothing to train: every term's weight is 0 (distance_weight and angle_weight, "
                "for the default terms) and no task loss is compiled. Give a weight > 0 or pass `loss=`."
            )

    @property
    def metrics(self):
        trackers = [self.loss_tracker]
        if self.task_loss is not None:
            trackers.append(self.task_loss_tracker)
        trackers += self.term_trackers
        if self._compile_metrics is not None:
            trackers.append(self._compile_metrics)
        return trackers

    def compute_terms(self, teacher, student, y=None, sample_weight=None, *, replicas=1, gather=None):
        """Adds up the objective from the tensors the terms read: the one place that does.

        Backend-agnostic (`keras.ops`); the TensorFlow `train_step` supplies
        the distribution specifics.

        Args:
            teacher: `{key: tensor}` of the teacher, as its `Extractor` gives.
            student: `{key: tensor}` of the student, its output included.
            y: The labels of the task loss; they also go to the terms that
                read them (DKD).
            sample_weight: The sample weights of the task loss.
            replicas: Replicas that each compute this on their own batch.
            gather: Gives a relational term's tensor over the global batch
                (`None`: relational terms see this replica's batch).

        Returns:
            `(total, share, values)`: `total` is the objective over the
            global batch, the number logged as `loss`; `share` is this
            replica's part, whose gradient summed over replicas is that of
            `total` (`total` itself on one replica); `values` maps
            `task_loss` and each term's name to its unweighted value.

            Under several replicas a relational term over the gathered batch
            enters each share whole, since its gradient flows only through
            the replica's own rows; per-example terms, per-replica relations
            and regularization enter as 1/replicas of their value, and the
            task loss as Keras scales it. On one replica both sums are one.
        """
        values, total, share = {}, [], []
        if self.task_loss is not None:
            output = student[self._student_extractor.output_key]
            # Keras losses already divide by the number of replicas.
            task = keras.ops.cast(self.task_loss(y, output, sample_weight=sample_weight), "float32")
            values["task_loss"] = task * replicas if replicas > 1 else task
            total.append(self.task_loss_weight * values["task_loss"])
            share.append(self.task_loss_weight * task)
        gathered = {}

        def over_global_batch(role, key, tensor):
            if (role, key) not in gathered:
                gathered[role, key] = gather(tensor)
            return gathered[role, key]

        regressors = iter(self.regressors)
        for term in self._active_terms:
            teacher_key = self._teacher_extractor.keys[term.name]
            student_key = self._student_extractor.keys[term.name]
            t, s, labels = teacher[teacher_key], student[student_key], y if term.uses_labels else None
            whole = term.relational and gather is not None
            if term.uses_regressor:
                s = next(regressors)(s)
                if whole:
                    s = gather(s)
            elif whole:
                s = over_global_batch("student", student_key, s)
            if whole:
                t = over_global_batch("teacher", teacher_key, t)
                labels = None if labels is None else over_global_batch("labels", None, labels)
            values[term.name] = term(t, s, labels)
            total.append(term.weight * values[term.name])
            share.append(term.weight * (values[term.name] if whole else values[term.name] / replicas))
        # Weight decay and other regularization of the student, as in fit.
        regularization = [keras.ops.cast(loss, "float32") for loss in self.student.losses]
        total = functools.reduce(operator.add, total + regularization)
        if replicas == 1:
            return total, total, values
        share = functools.reduce(operator.add, share + [loss / replicas for loss in regularization])
        return total, share, values

    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labelled = [term.name for term in self._active_terms if term.uses_labels]
        if labelled and y is None:
            raise ValueError(
                f"Term {labelled[0]!r} reads the class labels, so the data must be (x, y) pairs, but received inputs "
                "without labels. Pass labels to fit/evaluate (with cached teacher tensors: fit(cached, y)), or "
                "drop the term."
            )
        needs_labels = self.task_loss is not None or self._compile_metrics is not None
        if needs_labels and y is None:
            raise ValueError(
                "A task loss or metrics were compiled, so the data must be "
                "(x, y) pairs, but received inputs without labels. Pass labels "
                "to fit/evaluate, or compile without `loss=`/`metrics=` to "
                "train with the distillation terms alone."
            )
        return x, y, sample_weight

    def _checked_batch(self, inputs, cached):
        """`(inputs, teacher tensors)` of a batch, each checked finite; the teacher's run now or cached, without gradient.

        The student must be fed the returned inputs: TensorFlow runs the check
        because they depend on it. The inputs are checked first: compiled
        kernels can map NaN to a finite number (TensorFlow's ReLU gives 0),
        so a NaN image may give finite teacher tensors and a NaN student.
        One reduction per tensor.
        """
        inputs = keras.tree.map_structure(
            lambda tensor: self.checked_finite(tensor, INPUTS_NOT_FINITE) if is_float(tensor) else tensor, inputs
        )
        teacher = self._teacher_extractor
        origin = GIVEN_ORIGIN if teacher.precomputed else CACHED_ORIGIN
        if cached is None:
            cached = teacher(inputs, training=False)
            origin = TEACHER_ORIGIN
        return inputs, {
            key: keras.ops.stop_gradient(self.checked_finite(tensor, teacher_not_finite(origin, teacher.sources[key])))
            for key, tensor in cached.items()
        }

    def _statistics(self):
        """The moving means and variances of the student's BatchNorm layers that training updates (not frozen ones).

        Checked after each training step; not the other non-trainable weights
        (a frozen backbone's would cost a pass over its weights every step).
        """
        return [
            statistic
            for layer in self.student._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            for statistic in (layer.moving_mean, layer.moving_variance)
        ]

    def _guards(self):
        """The messages of a JAX step's checks, in the order of `_jax_status`; the last: an earlier step failed."""
        sources = [self._teacher_extractor.sources[key] for key in self._teacher_extractor.computed]
        return [
            INPUTS_NOT_FINITE,
            *(teacher_not_finite(TEACHER_ORIGIN, source) for source in sources),
            *(teacher_not_finite(GIVEN_ORIGIN if self._teacher_extractor.precomputed else CACHED_ORIGIN, source)
              for source in sources),
            *map(statistic_not_finite, self._statistics()),
            LOSS_NOT_FINITE,
            "An earlier step of this execution (steps_per_execution > 1) held NaN/Inf values and was not "
            "applied, nor were the steps after it; run with steps_per_execution=1 to see which check failed.",
        ]

    def _split(self, x):
        teacher = self._teacher_extractor
        inputs, cached = split_cached(x, teacher.computed, teacher.output_key)
        for key, tensor in (cached or {}).items():
            _check_cached_shape(tensor, teacher.specs[key], teacher.sources[key])
        return inputs, cached

    def _student_terms(self, teacher, inputs, y, sample_weight, training, **distribution):
        """Runs the student once and adds up the terms: `(student output, total, share, values)`."""
        student = self._student_extractor(inputs, training=training)
        total, share, values = self.compute_terms(teacher, student, y, sample_weight, **distribution)
        return student.get(self._student_extractor.output_key), total, share, values

    def _update_metrics(self, x, y, sample_weight, output, total, values):
        self.loss_tracker.update_state(total)
        if "task_loss" in values:
            self.task_loss_tracker.update_state(values["task_loss"])
        for tracker in self.term_trackers:
            tracker.update_state(values[tracker.name])
        if y is None:
            return self.get_metrics_result()
        return self.compute_metrics(split_cached(x)[0], y, output, sample_weight=sample_weight)

    # train_step and test_step are the running backend's (rkd_keras.steps), each as Keras documents custom training
    # for it ("Customizing what happens in fit()"): all three check the batch (`_checked_batch`), run the student
    # once and add the terms up (`_student_terms`), and update the metrics (`_update_metrics`).

    def get_config(self):
        config = {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
        }
        if self.distance_weight is not None:  # built from the shortcut weights
            config.update(distance_weight=self.distance_weight, angle_weight=self.angle_weight)
        else:
            config["terms"] = [keras.saving.serialize_keras_object(term) for term in self.terms]
        return {
            **config,
            "task_loss_weight": self.task_loss_weight,
            "global_batch_relations": self.global_batch_relations,
        }

    def save(self, filepath, *args, **kwargs):
        """`Model.save`, after checking that the configuration can be written (nothing is written if not)."""
        self.get_config()
        return super().save(filepath, *args, **kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        if "terms" in config:
            config["terms"] = [keras.saving.deserialize_keras_object(term) for term in config["terms"]]
        return cls(**config)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.student.built:
            # Create the slots now, so the saved optimizer state loads into them. An optimizer saved before its
            # first step holds only the variables it had then (its step count, its learning rate): those load
            # into the same variables, where Keras would skip them with a warning that the state was not loaded.
            unbuilt = list(self.optimizer.variables)
            self.optimizer.build(self.trainable_variables)
            self.optimizer.load_own_variables = functools.partial(_load_optimizer, self.optimizer, unbuilt)


class TermWarmup(keras.callbacks.Callback):
    """Ramps terms of a `Distiller` up over the first epochs: `weight · min(epoch / warmup_epochs, 1)`.

    Epochs count from 1, as mdistiller's trainer counts them: DKD's warm-up
    (megvii-research/mdistiller `mdistiller/distillers/DKD.py`,
    `min(epoch / 20, 1) · dkd_loss`, `cfg.DKD.WARMUP = 20`) is
    `TermWarmup({"dkd": 20})`. A change of weight rebuilds the step
    functions (a weight is a constant of the compiled step), so each epoch
    of the warm-up compiles once more; after it the weights are the terms'
    own and stay so. The terms keep their own weights outside `fit`.

    Args:
        warmup_epochs: `{term name: epochs > 0}` of the Distiller's terms.

    Example:
    ```python
    distiller = rkd_keras.Distiller(teacher, student, terms=[rkd_keras.Term("dkd")])
    distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, y, epochs=240, callbacks=[rkd_keras.TermWarmup({"dkd": 20})])
    ```
    """

    def __init__(self, warmup_epochs: dict):
        super().__init__()
        if not isinstance(warmup_epochs, dict) or not warmup_epochs:
            raise ValueError(f"warmup_epochs must map term names to epochs, received {warmup_epochs!r}.")
        self.warmup_epochs = {name: checks.check_int(f"warmup epochs of term {name!r}", epochs, low=1)
                              for name, epochs in warmup_epochs.items()}
        self._full = {}

    def _terms(self):
        terms = {term.name: term for term in getattr(self.model, "terms", [])}
        missing = [name for name in self.warmup_epochs if name not in terms]
        if missing:
            raise ValueError(
                f"TermWarmup ramps up term {missing[0]!r}, but the model has "
                + (f"the terms {', '.join(map(repr, terms))}." if terms else "no terms (it is not a Distiller).")
            )
        return terms

    def on_train_begin(self, logs=None):
        terms = self._terms()
        self._full = {name: terms[name].weight for name in self.warmup_epochs}

    def on_epoch_begin(self, epoch, logs=None):
        self._set({name: self._full[name] * min((epoch + 1) / epochs, 1.0) for name, epochs in self.warmup_epochs.items()})

    def on_train_end(self, logs=None):
        self._set(self._full)

    def _set(self, weights):
        terms = self._terms()
        if all(terms[name].weight == weight for name, weight in weights.items()):
            return
        for name, weight in weights.items():
            terms[name].weight = weight
        # fit reads its train function at every step; evaluate (and fit's validation) makes a new one when None.
        self.model.make_train_function(force=True)
        self.model.test_function = None

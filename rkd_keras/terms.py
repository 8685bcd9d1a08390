"""Distillation terms: which loss compares which teacher tensor with which student tensor.

A `Term` is one weighted comparison, `weight · loss(teacher tensor, student
tensor)`, where each tensor is a model's output or the output of one of its
named layers. An `Extractor` runs a model once and returns every tensor its
terms read, however many terms read it. Losses know nothing of terms, and
terms nothing of the `Distiller` that adds them up.

Relational terms (RKD-D, RKD-A, DarkRank, similarity preserving, PKT,
correlation congruence, DIST) compare relations across the batch: their value
depends on which examples share a batch, and under `tf.distribute` they need
the global batch. Per-example terms (Hinton's KD, FitNet, attention transfer)
compare each example's teacher and student tensors on their own and average.
A term reads this from its loss's `relational` attribute, and from
`uses_labels` whether its loss also reads the batch's labels (DKD): the
Distiller then passes it each batch's `y`.

This module also defines the cached-input contract of
`Distiller.cache_teacher_embeddings`: `cached_inputs` builds it,
`check_cached_rows` checks its sizes and `split_cached` reads it.
"""

import difflib

import keras
import numpy as np

from rkd_keras import checks, losses
from rkd_keras.losses.base import BATCH_MISMATCH
from rkd_keras.saving import register

# The keys of a batch whose teacher tensors were computed ahead of training.
INPUTS = "inputs"
TEACHER_TENSORS = "teacher_embeddings"


def check_weight(name: str, value) -> float:
    """Returns `value` as a float, raising unless it is finite and ≥ 0 (0 turns the term off)."""
    return checks.check_number(f"`{name}`", value, low=0)


def _library_name(loss):
    """The `LOSSES` name of a library loss function (`rkd_keras.losses.fitnet` → "fitnet"), else `loss`.

    A library function is the same term as its name: the same wrapper, so the
    same `relational` label, FitNet's regressor, and a config that saves.
    """
    for name in losses.LOSSES:
        if getattr(losses, name, None) is loss:
            return name
    return loss


@register
class Term:
    """One weighted comparison of a teacher tensor with a student tensor.

    The Distiller adds `weight · loss(teacher tensor, student tensor)` to the
    student's objective and logs the unweighted value under `name`. Each
    tensor is the model's output (`None`) or the output of the layer of that
    name, so a term can put RKD on a classifier's pooled features while
    another puts Hinton's KD on its logits. A term whose weight is 0 is
    neither computed nor logged.

    The loss's `call(teacher, student)` gives the value (the mean, if it
    returns more than a scalar), in float32. Any other `keras.losses.Loss`
    (e.g. `keras.losses.MeanSquaredError`) is called as Keras calls it,
    `loss(teacher, student)`, so its `reduction` holds: the default averages
    its per-example values, `"sum"` adds them up, and `None` leaves them to
    the term, which takes their mean. A loss whose `uses_labels` is
    true (DKD) is called as `call(teacher, student, labels)` with the
    batch's `y`, and `fit` refuses data without labels for it. `relational` says whether it
    compares relations across the batch (RKD-D, RKD-A, DarkRank, similarity
    preserving, PKT, correlation congruence, DIST) or each example on its own
    (Hinton's KD, FitNet, attention transfer); a FitNet term's student tensor
    first passes through a `HintRegressor` that the Distiller adds and trains.

    Args:
        loss: A name of `rkd_keras.losses.LOSSES` (e.g. `"rkd_angle"`), a
            `keras.losses.Loss` (`y_true` = teacher, `y_pred` = student), or
            a function `fn(teacher, student) -> scalar` (treated as
            relational; a Distiller holding it cannot be saved). A function
            of `rkd_keras.losses` (e.g. `rkd_keras.losses.fitnet`) is the
            same term as its name.
        weight: The term's weight, finite and ≥ 0.
        teacher_layer: Name of the teacher's layer to read, or `None` for
            the teacher's output.
        student_layer: Name of the student's layer to read, or `None` for
            the student's output.
        name: The key of the term in the logs; defaults to the loss's name.
            None of `loss`, `task_loss` or `val_...`; terms of one Distiller
            need distinct names, none of them a compiled metric's name.

    Example:
    >>> term = Term("rkd_angle", weight=2.0, teacher_layer="pool", student_layer="pool", name="rkd_a_pool")
    >>> term.name, term.relational
    ('rkd_a_pool', True)
    """

    def __init__(self, loss, weight: float = 1.0, teacher_layer: str | None = None,
                 student_layer: str | None = None, name: str | None = None):
        # The command line checks its term specs by the same rules (`checks.check_term_specs`), before TensorFlow loads.
        self.loss = losses.get(_library_name(loss))
        self.name = checks.check_term_name(self.loss.name if name is None else name)
        self.weight = checks.check_term_weight(self.name, weight)
        self.teacher_layer = checks.check_term_layer("teacher_layer", teacher_layer)
        self.student_layer = checks.check_term_layer("student_layer", student_layer)

    @property
    def relational(self) -> bool:
        """Whether the loss compares relations across the batch (Keras's own losses are per example)."""
        return bool(getattr(self.loss, "relational", False))

    @property
    def uses_regressor(self) -> bool:
        """Whether the student's tensor passes through a learned `HintRegressor` first (FitNet)."""
        return bool(getattr(self.loss, "uses_regressor", False))

    @property
    def uses_labels(self) -> bool:
        """Whether the loss reads the batch's labels (DKD): its `call(teacher, student, labels)`."""
        return bool(getattr(self.loss, "uses_labels", False))

    def __call__(self, teacher, student, labels=None):
        """The term's unweighted value: a float32 scalar. `labels` (the batch's `y`) only for a term that reads them."""
        if not self.uses_labels:
            # A loss of rkd_keras (or a wrapped function) gives its value from `call`, checks included. Any
            # other Keras loss gives per-example values there and reduces them in `__call__`, by its `reduction`.
            is_wrapper = isinstance(self.loss, losses.LossWrapper)
            value = self.loss.call(teacher, student) if is_wrapper else self.loss(teacher, student)
        elif labels is None:
            raise ValueError(
                f"Term {self.name!r} ({self.loss.name}) reads the class labels, but the data holds inputs without "
                "labels. Pass (x, y) pairs to fit/evaluate (cached teacher tensors too: fit(cached, y))."
            )
        else:
            value = self.loss.call(teacher, student, labels)
        value = keras.ops.cast(value, "float32")
        return value if len(value.shape) == 0 else keras.ops.mean(value)

    def check_shapes(self, teacher, student, teacher_source: str, student_source: str):
        """Raises if the loss cannot compare tensors of these shapes, naming both layers.

        Computes the term once on small random arrays of the two shapes (a
        batch of 2): shape errors surface here, when the Distiller is built,
        instead of inside the first training step.

        Args:
            teacher: Symbolic tensor (`keras.KerasTensor`) of the teacher's
                compared tensor; unknown sizes other than the batch's skip the
                check.
            student: The student's, after its regressor for FitNet.
            teacher_source: How the message names the teacher's tensor.
            student_source: How the message names the student's.
        """
        if None in (*teacher.shape[1:], *student.shape[1:]):
            return
        rng = np.random.default_rng(0)

        def batch_of_two(spec):
            return keras.ops.cast(rng.normal(size=(2, *spec.shape[1:])), spec.dtype)

        labels = keras.ops.zeros((2,), "int32") if self.uses_labels else None
        try:
            self(batch_of_two(teacher), batch_of_two(student), labels)
        except Exception as error:  # each backend raises its own kind for a shape mismatch
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(
                f"Term {self.name!r} ({self.loss.name}) cannot compare {teacher_source} of shape "
                f"{tuple(teacher.shape)} with {student_source} of shape {tuple(student.shape)}: {error}"
            ) from error

    def get_config(self) -> dict:
        if type(self.loss) is losses.LossWrapper:
            raise ValueError(
                f"Term {self.name!r} holds a plain function, which a saved model cannot store. Use a loss "
                "of rkd_keras.losses by name, or a registered keras.losses.Loss subclass."
            )
        return {
            "loss": keras.losses.serialize(self.loss),
            "weight": self.weight,
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Term":
        return cls(**{**config, "loss": keras.losses.deserialize(config["loss"])})

    @classmethod
    def from_spec(cls, spec: dict) -> "Term":
        """The term a spec describes: a mapping with `loss` and any of `checks.TERM_KEYS`.

        Specs are the terms as data (`rkd_keras.presets.term`, a config
        file's `terms`): `options` are the loss wrapper's arguments.
        `warmup_epochs` is a training schedule, not part of the term: give it
        to `TermWarmup`.

        Raises:
            ValueError: the spec breaks a rule of `checks.check_term_spec`, or
                its options do not fit its loss's wrapper.

        >>> Term.from_spec({"loss": "rkd_angle", "weight": 50.0, "teacher_layer": "pool", "student_layer": "pool",
        ...                 "options": {"l2_normalize": True}})
        <Term 'rkd_angle': 50 · rkd_angle(teacher 'pool', student 'pool'), relational>
        """
        spec = checks.check_term_spec("term spec", spec)
        try:
            loss = losses.LOSSES[spec["loss"]](**spec["options"])
        except TypeError as error:
            raise ValueError(f"term {spec['name']!r}: options {spec['options']} do not fit {spec['loss']}: {error}") from None
        return cls(loss, spec["weight"], spec["teacher_layer"], spec["student_layer"], spec["name"])

    def __repr__(self):
        def source(role, layer):
            return f"{role} output" if layer is None else f"{role} {layer!r}"

        kind = ("relational" if self.relational else "per-example") + (", reads labels" if self.uses_labels else "")
        return (
            f"<Term {self.name!r}: {self.weight:g} · {self.loss.name}({source('teacher', self.teacher_layer)}, "
            f"{source('student', self.student_layer)}), {kind}>"
        )


def build_terms(specs) -> list:
    """`Term`s from a list of term specs (as `rkd_keras.presets.term` writes them, or read from a config file).

    Raises:
        ValueError: a spec breaks a rule of `checks.check_term_specs` (names
            it, e.g. `terms[1]: ...`), or its options do not fit its loss.

    Example:
    ```python
    terms = build_terms(CLASSIFICATION_RECIPE["terms"])
    distiller = rkd_keras.Distiller(teacher, student, terms=terms)
    ```
    """
    return [Term.from_spec(spec) for spec in checks.check_term_specs("terms", specs)]


def _output_layer_name(model):
    """Name of the layer that produces a graph model's single output."""
    names = getattr(model, "output_names", None)  # functional models
    return names[0] if names else model.layers[-1].name  # Sequential: its last layer


def _graph_input(model):
    """The inputs of a graph model, as its extractor takes them.

    A `keras.Sequential` model has no `input` of its own (reading it raises
    until the model is called as a layer); once it knows its input shape (it
    starts with a `keras.Input`, or was built or called), `inputs` holds its
    inner functional model's single input, to which its layers' outputs lead.
    """
    return model.inputs[0] if isinstance(model, keras.Sequential) else model.input


def _has_structured_output(model):
    if isinstance(model, keras.Sequential):
        return False  # its output is its last layer's
    return isinstance(model.output, dict) or len(model.outputs) != 1


class Extractor:
    """Runs a model once and returns the tensors its terms read, keyed by layer name.

    A model whose terms read only its output runs as it is. Otherwise the
    extractor is a functional `keras.Model` from the model's inputs to every
    tensor read, sharing the model's layers (and weights), built once.
    `keys[term name]` is the key of the tensor that term reads: the name of
    the layer it reads, for the model's output the name of the layer that
    produces it (the model's own name for a subclassed model). Two terms
    that read the same tensor share one key; `output_key` is the key of the
    model's output (`None` for a model with several outputs). Every term's
    layer is checked; only those of terms with a weight > 0 are computed,
    in the order of `computed`.

    Args:
        model: The teacher or the student; `None` for a teacher whose
            output comes with every batch (`cached_inputs`), computed
            elsewhere: no term may then read one of its layers.
        role: `"teacher"` or `"student"`, for messages and to pick
            `Term.teacher_layer` or `Term.student_layer`.
        terms: The terms that read the model.
        keep_output: Also return the model's output (the student's, for the
            task loss and metrics), when it is a single tensor.
    """

    def __init__(self, model, role: str, terms, *, keep_output: bool = False):
        if model is None:
            self._init_precomputed(role, terms)
            return
        self.precomputed = False
        self.model_name, self.role = model.name, role
        graph = bool(getattr(model, "inputs", None))  # functional or Sequential
        self.structured = graph and _has_structured_output(model)
        self.output_key = None if self.structured else _output_layer_name(model) if graph else model.name
        # key → symbolic tensor (None for a subclassed model's output: known only when it runs)
        self.specs, self.sources, self.keys, computed = {}, {}, {}, []
        reads = [(term.name, getattr(term, f"{role}_layer"), term.weight > 0) for term in terms]
        if keep_output and not self.structured:
            reads.append((None, None, True))
        for term_name, layer, runs in reads:
            if layer is None and self.structured:
                raise ValueError(
                    f"The {role} {model.name!r} returns {_describe_structure(model.output)}, but term "
                    f"{term_name!r} compares the {role}'s output, which must be one tensor. Select one "
                    f"with Term(..., {role}_layer='<layer name>'), or give the {role} a single output."
                )
            if layer is None:
                key = self.output_key
                self.sources[key] = f"the {role}'s output"
                self.specs[key] = model.outputs[0] if graph else None
            else:
                key = layer
                self.sources[key] = f"{role} layer {layer!r}"
                self.specs[key] = self._layer_output(model, layer, term_name, graph)
            self.keys[term_name] = key
            if runs and key not in computed:
                computed.append(key)
        self.keys.pop(None, None)
        self.computed = computed
        self._returns_dict = False
        if not computed:
            self.model = None  # no term reads this model: it never runs
        elif computed == [self.output_key]:
            self.model = model
        else:
            tensors = {key: self.specs[key] for key in computed}
            self.model = keras.Model(_graph_input(model), tensors, name=f"{model.name}_{role}_extractor")
            self._returns_dict = True

    def _init_precomputed(self, role, terms):
        """No model: the tensors come with every batch (teacher embeddings computed elsewhere, e.g. read from a file).

        Such a batch holds the teacher's output alone, so a term that reads
        one of its layers is refused.
        """
        for term in terms:
            layer = getattr(term, f"{role}_layer")
            if layer is not None:
                raise ValueError(
                    f"Term {term.name!r} reads {role} layer {layer!r}, but this Distiller has no {role} model: its "
                    f"{role} embeddings come with each batch (e.g. read from a file), which hold the {role}'s output "
                    f"alone. Compare the {role}'s output ({role}_layer=None), or distil from the {role} model itself."
                )
        self.precomputed = True
        self.model_name, self.role, self.structured = TEACHER_TENSORS, role, False
        self.output_key = TEACHER_TENSORS
        self.specs = {self.output_key: None}  # the width is known only from the batches
        self.sources = {self.output_key: f"the {role} embeddings of the batch"}
        self.keys = {term.name: self.output_key for term in terms}
        self.computed = [self.output_key] if any(term.weight > 0 for term in terms) else []
        self.model, self._returns_dict = None, False

    def _layer_output(self, model, layer, term_name, graph):
        if not graph and isinstance(model, keras.Sequential):
            raise ValueError(
                f"Term {term_name!r} reads {self.role} layer {layer!r}, but the {self.role} "
                f"{model.name!r} is a keras.Sequential model whose input shape is not known yet, so its "
                f"layers have no outputs to select. Start it with its input, keras.Sequential(["
                f"keras.Input(shape), ...]), or build it first ({self.role}.build((None, *shape)))."
            )
        if not graph:
            raise ValueError(
                f"Term {term_name!r} reads {self.role} layer {layer!r}, but the {self.role} "
                f"{model.name!r} is a subclassed model, whose inner tensors cannot be selected. Build "
                f"the {self.role} with the functional API (keras.Model(inputs, outputs)) or "
                f"keras.Sequential, or compare its output ({self.role}_layer=None)."
            )
        names = [each.name for each in model.layers]
        if layer not in names:
            nested = _nested_model_holding(model, layer)
            if nested is not None:
                raise ValueError(
                    f"Term {term_name!r} reads {self.role} layer {layer!r}, which is inside the {self.role}'s "
                    f"layer {nested.name!r}, a nested model (e.g. a keras.applications backbone called on the "
                    f"inputs); a term reads the {self.role}'s own layers. Read the nested model's output "
                    f"({self.role}_layer={nested.name!r}), or build the {self.role} flat: create the backbone on "
                    "your input, e.g. keras.applications.MobileNetV2(..., input_tensor=inputs), and add the "
                    "head on its .output, so that its layers are the model's own."
                )
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            shown = ", ".join(map(repr, names[-10:]))
            raise ValueError(
                f"Term {term_name!r} reads {self.role} layer {layer!r}, but the {self.role} "
                f"{model.name!r} has no layer of that name.{hint} Its layers"
                f"{' end with' if len(names) > 10 else ' are'}: {shown}."
            )
        try:
            output = _output_in_graph(model.get_layer(layer))
        except (AttributeError, ValueError) as error:  # a layer called more than once
            raise ValueError(
                f"Term {term_name!r} reads {self.role} layer {layer!r}, whose output is ambiguous: {error}"
            ) from error
        if not isinstance(output, keras.KerasTensor):
            raise ValueError(
                f"Term {term_name!r} reads {self.role} layer {layer!r}, which returns "
                f"{_describe_structure(output)}; a term compares one tensor."
            )
        return output

    def __call__(self, inputs, training=None) -> dict:
        """`{key: tensor}` of every tensor read, from one run of the model (none if no term reads it)."""
        if self.precomputed:
            raise ValueError(
                f"This Distiller has no {self.role} model, so every batch must carry the {self.role}'s embeddings: "
                f"{{'{INPUTS}': images, '{TEACHER_TENSORS}': embeddings}} (e.g. from "
                "rkd_keras.with_teacher_embeddings), but this batch holds the inputs alone."
            )
        if self.model is None:
            return {}
        outputs = self.model(inputs, training=training)
        if self._returns_dict:
            return outputs
        if isinstance(outputs, (dict, list, tuple)):
            raise ValueError(
                f"The {self.role} {self.model_name!r} returned {_describe_structure(outputs)}, but its "
                "output is compared as one tensor. Give it a single output, or build it with the "
                "functional API and select a layer with Term(..., "
                f"{self.role}_layer='<layer name>')."
            )
        return {self.computed[0]: outputs}

    def predict(self, data, batch_size: int) -> dict:
        """`{key: array}` of every tensor read, over `data` (as `Model.predict`)."""
        outputs = self.model.predict(data, batch_size=batch_size, verbose=0)
        return outputs if self._returns_dict else {self.computed[0]: outputs}


def _output_in_graph(layer):
    """The output of `layer` in the graph of the model holding it.

    A nested model's `output` is the tensor of its own graph (Keras then
    fails with "not connected to inputs"); the tensor it gives in the outer
    model's graph is the output of its call there.
    """
    if not isinstance(layer, keras.Model):
        return layer.output
    calls = layer._inbound_nodes
    if len(calls) != 1:
        raise ValueError(f"the nested model {layer.name!r} is called {len(calls)} times in the model, not once.")
    outputs = calls[0].output_tensors
    return outputs[0] if len(outputs) == 1 else outputs


def _nested_model_holding(model, name):
    """The layer of `model` that is a model holding a layer named `name` (at any depth), else `None`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and (
            name in [each.name for each in layer.layers] or _nested_model_holding(layer, name) is not None
        ):
            return layer
    return None


def _describe_structure(value):
    if isinstance(value, dict):
        return f"a dict (keys {', '.join(map(repr, value))})"
    return f"a {type(value).__name__}"


def cached_inputs(inputs, teacher_tensors: dict, output_key: str | None) -> dict:
    """A batch that carries the teacher's tensors: `{"inputs": x, "teacher_embeddings": ...}`.

    `teacher_embeddings` is the teacher's output itself when it is the only
    tensor the terms read (the format of rkd_keras 0.1.0), else a dict
    `{key: array}` of every tensor they read (keys as `Extractor.keys`).

    Args:
        inputs: The model inputs.
        teacher_tensors: `{key: array}`, as `Extractor.predict` gives.
        output_key: The key of the teacher's output.
    """
    if list(teacher_tensors) == [output_key]:
        teacher_tensors = teacher_tensors[output_key]
    return {INPUTS: inputs, TEACHER_TENSORS: teacher_tensors}


def is_cached(x) -> bool:
    """Whether `x` is a batch that carries the teacher's tensors (`cached_inputs`)."""
    return isinstance(x, dict) and set(x) == {INPUTS, TEACHER_TENSORS}


def check_cached_rows(x) -> None:
    """Raises when a cached batch (`cached_inputs`) holds another number of teacher rows than of inputs.

    Checked before `fit` slices the arrays into batches: Keras's own check
    of their sizes fails on the dict with an unrelated `AttributeError`.
    Anything else (plain inputs, a dataset) passes unchecked.
    """
    if not is_cached(x):
        return

    def rows(structure):
        return {int(leaf.shape[0]) for leaf in keras.tree.flatten(structure) if getattr(leaf, "shape", None)}

    inputs, teacher = rows(x[INPUTS]), rows(x[TEACHER_TENSORS])
    if inputs and teacher and inputs != teacher:
        raise ValueError(
            f"{BATCH_MISMATCH}: the cached batch holds {' and '.join(map(str, sorted(teacher)))} teacher rows for "
            f"{' and '.join(map(str, sorted(inputs)))} inputs. Cache the teacher's tensors of these very inputs: "
            "x = distiller.cache_teacher_embeddings(inputs)."
        )


def split_cached(x, keys=None, output_key: str | None = None):
    """`(inputs, teacher tensors or None)` of a batch, cached (`cached_inputs`) or not.

    Args:
        x: The model inputs of a batch.
        keys: The keys of the teacher tensors the terms read; with them, the
            cached tensors come back as `{key: tensor}`, and tensors cached
            for other terms are refused.
        output_key: The key of the teacher's output (a bare cached tensor).

    Returns:
        `(inputs, None)` for plain inputs; `(inputs, teacher tensors)` for a
        cached batch.
    """
    if not is_cached(x):
        return x, None
    teacher = x[TEACHER_TENSORS]
    if keys is None:
        return x[INPUTS], teacher
    if not isinstance(teacher, dict):
        teacher = {output_key: teacher}
    if set(teacher) != set(keys):
        def named(cached_keys):
            names = ("output" if key == output_key else f"layer {key!r}" for key in sorted(cached_keys, key=str))
            return " and ".join(names)

        raise ValueError(
            f"The batch carries the teacher's {named(teacher)} (cached), but the terms read its "
            f"{named(keys)}. Cache them with this Distiller's cache_teacher_embeddings."
        )
    return x[INPUTS], teacher

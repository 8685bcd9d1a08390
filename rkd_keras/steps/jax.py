"""The Distiller's `train_step` and `test_step` on JAX: stateless steps, and their finite checks as a status.

A JAX step cannot raise from compiled code, so it returns the result of its
checks (`Distiller._guards`, in order) as a status beside its logs, and does
not apply a step that failed one; the host reads the status when the next step
has been dispatched and raises (`JaxSteps._raising`).
"""

import jax
import jax.numpy as jnp
import keras

from rkd_keras.steps.finite import STATUS, is_float


class JaxSteps:
    """`train_step`/`test_step` of a `Distiller` on JAX (Keras's stateless `JAXTrainer` protocol)."""

    @staticmethod
    def checked_finite(tensor, message):
        """`tensor`: the step returns the checks' result as its status (`_jax_status`), eager or compiled."""
        return tensor

    # The status of the latest step, read after the next one is dispatched (`_raising`); None between calls.
    _unread_status = None

    def fit(self, *args, **kwargs):
        self._unread_status = None  # of a step of an interrupted call
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._unread_status = None
        return super().evaluate(*args, **kwargs)

    def _stateless(self, mapping, fn, *args, variables=(), **kwargs):
        """`(fn(*args, **kwargs), new values of variables)`, each variable read from `mapping` (its pairs).

        `variables` must be in `mapping`: one that `fn` did not assign
        keeps its value from there.
        """
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            result = fn(*args, **kwargs)
        return result, [scope.get_current_value(v) for v in variables]

    def _jax_step(self, trainable, non_trainable, data, training, optimizer_variables=None):
        """The terms, and with `optimizer_variables` their gradient: `(output, total, values, non-trainable, grads, status)`."""
        x, y, sample_weight = self._unpack(data)
        inputs, cached = self._split(x)
        frozen = list(zip(self.non_trainable_variables, non_trainable))
        # The teacher needs no gradient: run it outside the differentiated function.
        (inputs, teacher), _ = self._stateless(frozen, self._checked_batch, inputs, cached)

        def objective(trainable):
            mapping = list(zip(self.trainable_variables, trainable)) + frozen
            # Non-trainable variables (the student's BatchNorm statistics) flow through the state.
            (output, total, share, values), updated = self._stateless(
                mapping, self._student_terms, teacher, inputs, y, sample_weight, training,
                variables=self.non_trainable_variables,
            )
            if optimizer_variables is not None:  # mixed precision: the loss scale is an optimizer variable
                share, _ = self._stateless(
                    list(zip(self.optimizer.variables, optimizer_variables)), self.optimizer.scale_loss, share
                )
            return share, (output, total, values, updated)

        if optimizer_variables is None:
            aux, gradients = objective(trainable)[1], None
        else:
            (_, aux), gradients = jax.value_and_grad(objective, has_aux=True)(trainable)
        output, total, values, updated = aux
        status = self._jax_status(inputs, teacher, cached is not None, total if training else None,
                                  updated if training else None)
        return output, total, values, updated, gradients, status

    def _jax_status(self, inputs, teacher, cached, total, updated):
        """-1 if every check of `_guards` passes, else the index of the first that fails (an int32 scalar)."""
        def finite(tensor):
            return jnp.all(jnp.isfinite(tensor))

        passed = jnp.asarray(True)
        floats = [tensor for tensor in keras.tree.flatten(inputs) if is_float(tensor)]
        teachers = [finite(teacher[key]) for key in self._teacher_extractor.computed]
        position = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        checks = [
            jnp.all(jnp.stack([finite(tensor) for tensor in floats])) if floats else passed,
            *(passed if cached else check for check in teachers),
            *(check if cached else passed for check in teachers),
            *(passed if updated is None else finite(updated[position[id(v)]]) for v in self._statistics()),
            passed if total is None else finite(total),
        ]
        checks = jnp.stack(checks).astype("int32")
        return jnp.where(jnp.all(checks == 1), -1, jnp.argmin(checks)).astype("int32")

    def _jax_metrics(self, metrics_variables, data, output, total, values):
        x, y, sample_weight = self._unpack(data)
        return self._stateless(
            list(zip(self.metrics_variables, metrics_variables)), self._update_metrics,
            x, y, sample_weight, output, total, values, variables=self.metrics_variables,
        )

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        output, total, values, updated, gradients, status = self._jax_step(
            trainable, non_trainable, data, True, optimizer_variables
        )
        # Steps chained by steps_per_execution: one after a failed step (which logged a NaN loss) is not applied either.
        total_index = next(i for i, v in enumerate(self.metrics_variables) if v is self.loss_tracker.total)
        earlier = ~jnp.isfinite(metrics_variables[total_index])
        status = jnp.where((status < 0) & earlier, len(self._guards()) - 1, status)
        applied = status < 0
        trainable, optimizer_variables = jax.lax.cond(
            applied,
            lambda: tuple(map(list, self.optimizer.stateless_apply(optimizer_variables, gradients, trainable))),
            lambda: (list(trainable), list(optimizer_variables)),
        )
        non_trainable = [new if new is old else jnp.where(applied, new, old) for new, old in zip(updated, non_trainable)]
        total = jnp.where(applied, total, jnp.nan)
        logs, metrics_variables = self._jax_metrics(metrics_variables, data, output, total, values)
        return {**logs, STATUS: status}, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        output, total, values, non_trainable, _, status = self._jax_step(trainable, non_trainable, data, False)
        logs, metrics_variables = self._jax_metrics(metrics_variables, data, output, total, values)
        return {**logs, STATUS: status}, (trainable, non_trainable, metrics_variables)

    def _raising(self, function, state_keys):
        """`function` (Keras's step function), raising once a step's status names a failed check.

        A step's status is read when the next step has been dispatched, or
        when the state is synced (the end of an epoch, of `fit`, of
        `train_on_batch`): reading it at once would make the host wait for
        every step, where JAX queues the next one. A step after a failed
        one applies nothing either (`train_step`), so the state the latest
        step returned is the state before the failed step; it is put back
        into the model (Keras took the values out of the variables for the
        step) before the error.
        """
        if getattr(function, "raises_on_status", False):
            return function

        def step(state, iterator):
            logs, state = function(state, iterator)
            logs = dict(logs)
            previous, self._unread_status = self._unread_status, logs.pop(STATUS)
            if previous is not None and int(previous) >= 0:
                self._jax_state = dict(zip(state_keys, state))
                self._jax_state_synced = False
                self._unread_status = None
                self.jax_state_sync()
                raise ValueError(self._guards()[int(previous)])
            return logs, state

        step.raises_on_status = True
        return step

    def jax_state_sync(self):
        """Keras's sync of the step's state into the model, then the error of a failed step not yet raised."""
        status, self._unread_status = self._unread_status, None
        super().jax_state_sync()
        if status is not None and int(status) >= 0:
            raise ValueError(self._guards()[int(status)])

    def make_train_function(self, force=False):
        super().make_train_function(force)
        self.train_function = self._raising(self.train_function, (
            "trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables"
        ))
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = self._raising(
            self.test_function, ("trainable_variables", "non_trainable_variables", "metrics_variables")
        )
        return self.test_function

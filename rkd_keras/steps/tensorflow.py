"""The Distiller's `train_step` and `test_step` on TensorFlow: graph steps under `tf.distribute`, with
graph-side finite checks (`tf.debugging.assert_all_finite`; XLA drops them)."""

import tensorflow as tf

from rkd_keras.steps.finite import LOSS_NOT_FINITE, statistic_not_finite


def global_batch(tensor):
    """The tensor of every replica's batch, with gradient only to this replica's rows.

    Outside a `tf.distribute` replica context (or with one replica) this is
    `tensor` itself. Other replicas' rows are constants here; their own
    replicas differentiate them, so the gradients summed over replicas equal
    the gradient of the global-batch loss.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    shape = tf.shape(tensor)
    rows = tf.reshape(tensor, [shape[0], -1])
    # One collective: each row carries its replica's index, which locates
    # this replica's rows even when the replicas' batch sizes differ.
    replica = tf.cast(context.replica_id_in_sync_group, rows.dtype)
    tagged = tf.concat([tf.stop_gradient(rows), tf.fill([shape[0], 1], replica)], axis=1)
    gathered = context.all_gather(tagged, axis=0)
    start = tf.reduce_sum(tf.cast(gathered[:, -1] < replica, tf.int32))
    end = start + shape[0]
    gathered = gathered[:, :-1]
    rows = tf.concat([gathered[:start], rows, gathered[end:]], axis=0)
    return tf.reshape(rows, tf.concat([[-1], shape[1:]], axis=0))


class TensorFlowSteps:
    """`train_step`/`test_step` of a `Distiller` on TensorFlow (Keras's `TensorFlowTrainer` traces them)."""

    @staticmethod
    def checked_finite(tensor, message):
        """`tensor`, checked in the graph: the step fails with `message` if it holds NaN or ±inf."""
        return tf.debugging.assert_all_finite(tensor, message)

    def _tf_step(self, data, training):
        """The terms on a TensorFlow batch, under `tf.distribute` when there is one."""
        x, y, sample_weight = self._unpack(data)
        inputs, teacher = self._checked_batch(*self._split(x))
        terms = self._student_terms(
            teacher, inputs, y, sample_weight, training,
            replicas=tf.distribute.get_strategy().num_replicas_in_sync,
            gather=global_batch if self.global_batch_relations else None,
        )
        return (x, y, sample_weight), terms

    def train_step(self, data):
        with tf.GradientTape() as tape:
            (x, y, sample_weight), (output, total, share, values) = self._tf_step(data, training=True)
            # Mixed precision: LossScaleOptimizer scales here, unscales in apply.
            scaled = self.optimizer.scale_loss(share)
        variables = self.trainable_variables  # the student's and the FitNet regressors'
        gradients = tape.gradient(scaled, variables)
        # The update waits for the checks of the BatchNorm statistics (read after the forward pass updated
        # them), then of the loss: an overflow in a BatchNorm layer makes the loss NaN too, and the first
        # message names the layer. The checks stay out of the gradient, which a loss scale may overflow.
        with tf.control_dependencies(
            [tf.debugging.assert_all_finite(v.value, statistic_not_finite(v)) for v in self._statistics()]
        ):
            checked = tf.debugging.assert_all_finite(total, LOSS_NOT_FINITE)
        with tf.control_dependencies([checked]):
            gradients = [None if g is None else tf.identity(g) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(x, y, sample_weight, output, total, values)

    def test_step(self, data):
        (x, y, sample_weight), (output, total, _, values) = self._tf_step(data, training=False)
        return self._update_metrics(x, y, sample_weight, output, total, values)

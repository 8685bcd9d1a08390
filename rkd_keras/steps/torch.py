"""The Distiller's `train_step` and `test_step` on PyTorch: eager steps that check finite before the update."""

import keras
import torch

from rkd_keras.steps.finite import LOSS_NOT_FINITE, statistic_not_finite


class TorchSteps:
    """`train_step`/`test_step` of a `Distiller` on PyTorch (Keras's `TorchTrainer`: one eager step per batch)."""

    @staticmethod
    def checked_finite(tensor, message):
        """`tensor`, or a `ValueError` with `message` if it holds NaN or ±inf (one host sync)."""
        if not bool(keras.ops.all(keras.ops.isfinite(tensor))):
            raise ValueError(message)
        return tensor

    def _torch_step(self, data, training):
        x, y, sample_weight = self._unpack(data)
        inputs, cached = self._split(x)
        with torch.no_grad():
            inputs, teacher = self._checked_batch(inputs, cached)
        return (x, y, sample_weight), self._student_terms(teacher, inputs, y, sample_weight, training)

    def train_step(self, data):
        self.zero_grad()
        (x, y, sample_weight), (output, total, share, values) = self._torch_step(data, training=True)
        self._check_step(total)
        # Mixed precision: LossScaleOptimizer scales here, unscales in apply.
        self.optimizer.scale_loss(share).backward()
        variables = self.trainable_variables  # the student's and the FitNet regressors'
        with torch.no_grad():
            self.optimizer.apply([v.value.grad for v in variables], variables)
        return self._update_metrics(x, y, sample_weight, output, total, values)

    def _check_step(self, total):
        """Raises before the update if a BatchNorm statistic of the student or the loss is NaN/Inf (one sync).

        A statistic first: an overflow in a BatchNorm layer makes the loss NaN too, and the message names the layer.
        """
        statistics = self._statistics()
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(t).all() for t in (*(v.value for v in statistics), total)])
            if bool(finite.all()):
                return
            failed = int(torch.argmin(finite.int()))
        raise ValueError(statistic_not_finite(statistics[failed]) if failed < len(statistics) else LOSS_NOT_FINITE)

    def test_step(self, data):
        with torch.no_grad():
            (x, y, sample_weight), (output, total, _, values) = self._torch_step(data, training=False)
            return self._update_metrics(x, y, sample_weight, output, total, values)

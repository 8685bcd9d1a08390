"""Shared by the benchmark scripts: medians after warm-up, peak memory, fresh processes on a chosen backend."""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def median_seconds(fn, repeats=5, budget=20.0):
    """Median wall time of `fn()` after one warm-up call; fewer repeats if slow."""
    fn()
    times = []
    while len(times) < repeats and (len(times) < 1 or sum(times) < budget):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def paired_median_seconds(fns, repeats=15):
    """Median wall time of each function, called in turn so machine noise hits all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def gradient_step(loss):
    """`step(teacher, student) -> (loss, gradient)` as NumPy, compiled as each backend compiles training.

    TensorFlow: `tf.function` with a `GradientTape`; JAX: `jax.jit` of
    `jax.value_and_grad`; PyTorch: eager `backward()` (Keras's default there).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(teacher, student):
            with tf.GradientTape() as tape:
                tape.watch(student)
                value = loss(teacher, student)
            return value, tape.gradient(value, student)

        return lambda t, s: tuple(np.asarray(a) for a in step(t, s))
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(loss, argnums=1))
        return lambda t, s: tuple(np.asarray(a) for a in step(t, s))

    def torch_step(teacher, student):
        student = student.detach().requires_grad_(True)
        value = loss(teacher, student)
        value.backward()
        return value.detach().cpu().numpy(), student.grad.cpu().numpy()

    return torch_step


def as_backend_arrays(*arrays):
    """NumPy arrays as tensors of the running backend, on its default device."""
    import keras

    return tuple(keras.ops.convert_to_tensor(a) for a in arrays)


def peak_bytes(loss, step, teacher, student):
    """Peak memory of one `step(teacher, student)` above what was live before, or None where not measurable.

    TensorFlow: its allocator's peak (CPU or GPU), not RSS, which keeps freed
    buffers and so cannot show a second call's peak. JAX: XLA's buffer
    assignment for the compiled `loss` step (its temporaries; the same figure
    on CPU and GPU). PyTorch: the CUDA allocator's peak on a GPU; not
    measured on CPU.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        step(teacher, student)
        return tf.config.experimental.get_memory_info(device)["peak"] - before
    if backend == "jax":
        import jax

        compiled = jax.jit(jax.value_and_grad(loss, argnums=1)).lower(teacher, student).compile()
        return compiled.memory_analysis().temp_size_in_bytes
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(teacher, student)
    return torch.cuda.max_memory_allocated() - before


def in_fresh_process(code, *args, backend=None):
    """Runs `code` in a new Python process (with `KERAS_BACKEND=backend`, if given); returns the JSON it prints last."""
    env = dict(os.environ, **({"KERAS_BACKEND": backend} if backend else {}))
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark process ({backend or 'default backend'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def __getattr__(name):
    # `StepTimer` subclasses a Keras callback: defined on first use, so importing this module loads no Keras.
    if name != "StepTimer":
        raise AttributeError(name)
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Seconds of each training step of `fit`, after waiting for its loss; the first step of each fit dropped."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step (JAX and PyTorch run ahead of Python)
            if batch > 0:  # the first step of each fit includes its set-up
                self.times.append(time.perf_counter() - self.start)

    globals()["StepTimer"] = StepTimer
    return StepTimer

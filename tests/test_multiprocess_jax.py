"""Several machines, for real: two JAX processes on localhost train a Distiller as one process does.

`backend_multiprocess.py` runs Keras's distribution API on JAX
(`keras.distribution.initialize` with a loopback coordinator, gloo CPU
collectives, `DataParallel` over both processes' devices, a `tf.data` input
that each process reads its half of): RKD-D and RKD-A see the global batch
of 32, so the two-process run equals the one-process run. The processes are
what separate machines would run, with `localhost` standing for the
coordinator's address.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "backend_multiprocess.py"
TIMEOUT = 240  # seconds; each run takes about 25 s on 2 cores

pytestmark = [pytest.mark.xdist_group("backends"), pytest.mark.slow]  # two JAX processes: over a minute


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _train(folder, num_processes):
    """Starts the processes and returns process 0's JSON; if one fails or hangs, stops all and shows every output."""
    port, out = _free_port(), folder / f"processes_{num_processes}.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    logs = [folder / f"processes_{num_processes}_rank_{rank}.log" for rank in range(num_processes)]
    processes = []
    for rank, log in enumerate(logs):
        with log.open("w") as sink:
            processes.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), str(rank), str(num_processes), str(port), str(out)], env=env,
                stdout=sink, stderr=subprocess.STDOUT,
            ))
    deadline = time.monotonic() + TIMEOUT
    # A process that fails leaves the others waiting for it at the coordinator: stop them at once.
    while any(p.poll() is None for p in processes):
        if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in processes):
            for p in processes:
                p.kill()
                p.wait()
            break
        time.sleep(0.2)
    if any(p.returncode != 0 for p in processes):
        shown = "\n".join(f"--- process {rank} (exit {p.returncode}):\n{log.read_text()[-3000:]}"
                          for rank, (p, log) in enumerate(zip(processes, logs)))
        pytest.fail(f"{num_processes}-process training on port {port} failed or passed {TIMEOUT} s:\n{shown}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    return {n: _train(folder, n) for n in (1, 2)}


def test_two_jax_processes_train_the_distiller_as_one_does(runs):
    one, two = runs[1], runs[2]
    assert (one["processes"], one["devices"]) == (1, 1)
    assert (two["processes"], two["devices"]) == (2, 2)  # one CPU device per process, one mesh over both
    assert set(two["history"]) == {"loss", "rkd_distance", "rkd_angle", "hinton_kd"}
    for key, values in one["history"].items():
        np.testing.assert_allclose(two["history"][key], values, rtol=1e-5, err_msg=key)
    assert one["history"]["loss"][-1] < one["history"]["loss"][0]
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)


def test_the_relations_of_the_global_batch_differ_from_each_process_half(runs):
    """What the equality above rules out: had each process compared only its 16 rows, RKD-A would differ."""
    halves, whole = runs[1]["first_batch_rkd_angle_halves"], runs[1]["first_batch_rkd_angle"]
    assert abs(np.mean(halves) - whole) > 1e-3 * whole, (halves, whole)

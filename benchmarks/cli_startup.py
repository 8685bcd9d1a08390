"""Start-up time of the command line: `--help`, a bad flag and a bad value, against `python -c pass`.

Run: .venv/bin/python benchmarks/cli_startup.py [--repeats 15]

Each command runs as a fresh process of this Python with this checkout on
PYTHONPATH, in turn with the others so machine noise hits all alike; the
table gives the median wall time and its ratio to an empty interpreter's
start measured in the same run. `import tensorflow` is shown for scale: what
every command paid before the command line parsed its flags first.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = "import sys\nfrom rkd_keras.cli import main\nsys.exit(main())\n"


def commands(script):
    python = [sys.executable]
    return {
        "python -c pass": [*python, "-c", "pass"],
        "rkd-keras --help": [*python, script, "--help"],
        "python -m rkd_keras --help": [*python, "-m", "rkd_keras", "--help"],
        "rkd-keras train-teacher --epohcs 3": [*python, script, "train-teacher", "--epohcs", "3"],
        "rkd-keras train-teacher --learning-rate -1": [*python, script, "train-teacher", "--learning-rate", "-1"],
        "python -c 'import tensorflow'": [*python, "-c", "import tensorflow"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as folder:
        # The console script pip writes: its sys.argv[0] ends in rkd-keras.
        script = Path(folder) / "rkd-keras"
        script.write_text(CONSOLE_SCRIPT)
        runs = commands(str(script))
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, command in runs.items():
                start = time.perf_counter()
                subprocess.run(command, env=env, cwd=folder, capture_output=True)
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["python -c pass"])
    print(f"{'command':<45} {'median':>9} {'× python -c pass':>17}   ({args.repeats} runs each)")
    for name, spent in times.items():
        median = statistics.median(spent)
        print(f"{name:<45} {1000 * median:7.0f} ms {median / baseline:16.1f}×")


if __name__ == "__main__":
    main()

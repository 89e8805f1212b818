"""How long `clearmark --help` and every command's `--help` take to start: each runs in
fresh processes (this checkout's code, `python -m clearmark`), and the median wall time,
the best one and the median CPU time (user + system) are printed. A measure, not a test.

    .venv/bin/python scripts/startup_time.py [-n 7] [-- COMMAND ARGS...]

With a COMMAND, only that command line is timed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from clearmark.workers.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], runs: int) -> tuple[float, float, float]:
    """(median wall s, best wall s, median CPU s) of `runs` runs, after one to warm the
    file cache."""
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), child_cpu_s()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - wall)
        cpus.append(child_cpu_s() - cpu)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=7)
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()
    clearmark = [sys.executable, "-m", "clearmark"]
    if args.command:
        commands = [args.command]
    else:
        commands = [[*clearmark, *name, "--help"] for name in ([], *([c] for c in COMMANDS))]
    print(f"{'command':<44} {'median s':>8} {'best s':>7} {'CPU s':>6}   ({args.runs} runs each)")
    for command in commands:
        median, best, cpu = timed(command, args.runs)
        if command[: len(clearmark)] == clearmark:
            command = ["clearmark", *command[len(clearmark) :]]
        print(f"{' '.join(command):<44} {median:8.2f} {best:7.2f} {cpu:6.2f}")


if __name__ == "__main__":
    main()

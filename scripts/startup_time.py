"""How long `clearmark --help` takes to start: runs it (or the command given after `--`)
in fresh processes and prints the median and best wall time. A measure, not a test.

    .venv/bin/python scripts/startup_time.py [-n 7] [-- COMMAND ARGS...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=7)
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()
    command = args.command or [str(Path(sys.executable).with_name("clearmark")), "--help"]
    subprocess.run(command, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(
        f"{' '.join(command)}: median {statistics.median(times):.2f} s, "
        f"best {min(times):.2f} s over {args.runs} runs"
    )


if __name__ == "__main__":
    main()

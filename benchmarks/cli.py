"""Command-line start-up: wall time of ``kd-detect --help`` and ``kd-detect check`` on a
small file, each a fresh process (what a user waits for), page cache warm.

The commands are the installed entry point next to this interpreter (``kd-detect``), or
``python -m kd_detect.cli`` when there is none; whatever the CLI imports today is measured.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DataShape, median, write_data

SMALL = DataShape("small", 8, (20, 40), (("rgb", 64), ("flow", 64)), 5, segments=2)


def kd_detect_command() -> list[str]:
    script = Path(sys.executable).with_name("kd-detect")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kd_detect.cli"]


def cli_commands(small_h5: Path) -> dict[str, list[str]]:
    """``{name: argv}`` of the timed commands."""
    kd = kd_detect_command()
    return {"help": [*kd, "--help"], "check": [*kd, "check", str(small_h5)]}


def bench_cli(root: Path, repeats: int) -> dict[str, Any]:
    """Median wall seconds of each command over ``repeats`` runs after one warm-up run;
    a command that fails is reported with its exit code and no time."""
    small = write_data(SMALL, Path(root) / "cli", dtypes=("float16",)).h5["float16"]
    out: dict[str, Any] = {"small_file": SMALL.name, "repeats": repeats, "commands": {}}
    for name, argv in cli_commands(small).items():
        times, code = [], 0
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            elapsed = time.perf_counter() - t0
            code = proc.returncode
            if code != 0:
                break
            if i:  # the first run warms the page cache
                times.append(elapsed)
        out["commands"][name] = {"argv": " ".join(Path(argv[0]).name if j == 0 else a for j, a in enumerate(argv)),
                                 "exit_code": code, "seconds": median(times) if code == 0 and times else None}
    return out

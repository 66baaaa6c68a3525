"""Issue 16: the Makefile's hint for a missing data file names a command that exists: the
converter of that name, the generator (synthetic variants) or the generic converter; and
``make data`` refuses a DATASET without a converter in one line; ``make test`` runs pytest over
``TEST_JOBS`` pytest-xdist workers."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
# -o: never rebuild the venv stamp from a test; -B: run the hint even if such a file exists
MAKE = ["make", "--no-print-directory", "-s", "-o", ".venv/.installed"]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, module", [
    ("tsu", "tsu"), ("charades", "charades"), ("synthetic_noisy", "synthetic"), ("missing", "generic"),
])
def test_missing_data_hint_names_a_command_that_runs(name, module):
    proc = make("-B", f"data/{name}.h5")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith(f"error: data/{name}.h5 is missing"), proc.stderr
    hint = re.search(r"make data (DATASET=\S+(?: OUT=\S+)?)", lines[0])
    assert hint, lines[0]
    # the hinted `make data` resolves to an existing converter writing the missing file
    dry = make("-n", "data", *shlex.split(hint.group(1)), "RAW=/some/release")
    assert dry.returncode == 0, dry.stderr
    assert f"-m data_prep.{module} " in dry.stdout and f"--out data/{name}.h5" in dry.stdout
    assert (ROOT / "data_prep" / f"{module}.py").is_file()


@pytest.mark.parametrize("dataset", ["missing", "synthetic_noisy", "_common"])
def test_make_data_refuses_a_dataset_without_a_converter(dataset):
    proc = make("data", f"DATASET={dataset}", "RAW=/x")
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0] == (
        f"error: no converter named '{dataset}': DATASET is one of charades generic multithumos pku_mmd "
        "synthetic tsu (your own features: DATASET=generic)")


@pytest.mark.parametrize("jobs, expected", [(None, ["-n", "2", "--dist", "worksteal"]), ("0", []),
                                            ("4", ["-n", "4", "--dist", "worksteal"])])
def test_make_test_spreads_the_suite_over_test_jobs_workers(jobs, expected):
    proc = make("-n", "test", *([f"TEST_JOBS={jobs}"] if jobs is not None else []), "PYTEST_ARGS=-k distill")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert argv[1:] == ["-m", "pytest", "-m", "not slow", *expected, "-k", "distill"], argv


@pytest.mark.parametrize("name, options", [
    ("synthetic_views", ["--preset", "views"]),
    ("synthetic_views_ceiling", ["--preset", "views", "--extra-training", "432"]),
    ("synthetic_views_unlabelled", ["--preset", "views", "--extra-training", "432", "--extra-subset", "unlabelled"]),
])
def test_the_viewpoint_worlds_files_are_made_by_the_generator_with_the_preset(name, options):
    """The viewpoint world's three files are the default's three (the world, 4x its training
    videos, the same extra videos unlabelled) with ``--preset views``."""
    dry = make("-B", "-n", f"data/{name}.h5")
    assert dry.returncode == 0, dry.stderr
    argv = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "data_prep.synthetic"]
    assert argv[argv.index("--out") + 1] == f"data/{name}.h5"
    rest = [a for i, a in enumerate(argv[3:], 3) if argv[i] != "--out" and argv[i - 1] != "--out"]
    assert rest == options
    base = make("-B", "-n", f"data/{name.replace('_views', '')}.h5")  # and the default world's file is the same
    assert shlex.split(base.stdout.strip().splitlines()[-1])[3:] == [
        a.replace("_views", "") for a in argv[3:] if a not in ("--preset", "views")]

"""Issue 16: an output that cannot be written is one line naming it and why, exit status 1,
checked before any work, and the inputs are left byte for byte as they were."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from helpers import one_line_failure

from kd_detect.errors import UnwritableOutputError
from kd_detect.io import atomic_write, ensure_writable_dir, ensure_writable_file

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_PROC = Path("/proc/self").is_dir()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A plain file where the outputs' folder should be."""
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------------------- io helpers
def test_a_file_in_the_way_is_named(blocker):
    with pytest.raises(UnwritableOutputError, match=rf"^{blocker}/sub/x.h5: cannot write here \(output\): "
                                                    rf"{blocker} is a file, not a folder$"):
        ensure_writable_file(blocker / "sub" / "x.h5")
    with pytest.raises(UnwritableOutputError, match=rf"^{blocker}: cannot write here \(plots\): it is a file"):
        ensure_writable_dir(blocker, "plots")
    assert blocker.read_text() == "not a folder"


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(UnwritableOutputError, match="it is a folder, not a file"):
        ensure_writable_file(tmp_path)
    with pytest.raises(UnwritableOutputError, match="it is a folder, not a file"), atomic_write(tmp_path) as tmp:
        Path(tmp).write_text("x")  # pragma: no cover - refused before


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
def test_a_virtual_folder_is_refused_by_a_probe():
    with pytest.raises(UnwritableOutputError, match=r"^/proc/x.h5: cannot write here \(output\): "):
        ensure_writable_file("/proc/x.h5")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UnwritableOutputError, match=r"Permission denied"):
            ensure_writable_file(ro / "x.h5")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_writable_folders_are_created_or_only_probed(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    ensure_writable_dir(tmp_path / "c" / "d", create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing created


# --------------------------------------------------------------------------- commands
def exit_line(main, argv, prog: str) -> str:
    """The converters' convention: ``SystemExit("prog: error: ...")`` (one stderr line, status 1)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    line = exc.value.code
    assert isinstance(line, str) and line.startswith(f"{prog}: error: ") and "\n" not in line
    return line


def test_generator_unwritable_out_is_one_line(blocker, tmp_path):
    from data_prep.synthetic import main

    prog = "python -m data_prep.synthetic"
    err = exit_line(main, ["--out", str(blocker / "x.h5"), "--videos", "4"], prog)
    assert err.endswith(f"{blocker / 'x.h5'}: cannot write here (output): {blocker} is a file, not a folder")
    err = exit_line(main, ["--out", str(tmp_path), "--videos", "4"], prog)
    assert err.endswith(f"{tmp_path}: cannot write here (output): it is a folder, not a file")
    if HAS_PROC:
        err = exit_line(main, ["--out", "/proc/x.h5", "--videos", "4"], prog)
        assert "/proc/x.h5: cannot write here (output): " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_converter_checks_its_out_before_reading_the_release(blocker, tmp_path):
    from data_prep.tsu import main

    # the release does not even exist: the output is judged first, before any reading
    err = exit_line(main, ["--raw", str(tmp_path / "missing"), "--out", str(blocker / "tsu.h5")],
                    "python -m data_prep.tsu")
    assert err.endswith(f"{blocker} is a file, not a folder")


def test_cache_teacher_unwritable_out_is_one_line_before_the_teacher_runs(blocker, synthetic_h5, tmp_path, capsys):
    from kd_detect.apps.cache_teacher import main

    data = shutil.copy(synthetic_h5, tmp_path / "d.h5")  # its classes do not even fit the teacher
    ckpt = shutil.copy(FIXTURES / "teacher.ckpt", tmp_path / "t.ckpt")
    before = {p: sha256(p) for p in (data, ckpt)}
    err = one_line_failure(main, ["--ckpt", str(ckpt), "--data", str(data), "--out", str(blocker / "c.h5")], capsys,
                           prog="kd-detect cache-teacher")
    assert err.endswith(f"{blocker / 'c.h5'}: cannot write here (teacher cache): {blocker} is a file, not a folder")
    assert {p: sha256(p) for p in (data, ckpt)} == before


def test_plot_when_plots_is_a_file(tmp_path, capsys):
    from kd_detect.apps.plot import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "plots").write_text("a file")
    err = one_line_failure(main, [str(run)], capsys, prog="kd-detect plot")
    assert err.endswith(f"{run / 'plots'}: cannot write here (plots folder): it is a file, not a folder")
    assert (run / "plots").read_text() == "a file"


def test_fit_unwritable_run_dir_is_one_line_before_any_logger(blocker, synthetic_h5, tmp_path, capsys):
    from kd_detect.cli import main

    before = sha256(synthetic_h5)
    argv = ["fit", "--config", str(ROOT / "experiments" / "synthetic_rgb.yaml"), f"--data.path={synthetic_h5}",
            f"--trainer.default_root_dir={blocker / 'run'}", "--trainer.max_epochs=1"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert len(err) == 1  # checked before seeding: no "Seed set to 0" line either
    assert err[-1] == (f"kd-detect: error: {blocker / 'run'}: cannot write here (run directory, "
                       f"--trainer.default_root_dir): {blocker} is a file, not a folder")
    assert sha256(synthetic_h5) == before and blocker.read_text() == "not a folder"

"""kd_detect.io.atomic_write: content, mode from the umask, cleanup, refusal of an input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kd_detect.errors import KdDetectError, OutputIsInputError
from kd_detect.io import AtomicFile, atomic_write

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_handlers(monkeypatch):
    """No AtomicFile open and the default SIGTERM handler, whatever earlier tests left."""
    import kd_detect.io as kio

    monkeypatch.setattr(kio, "_open_files", 0)
    monkeypatch.setattr(kio, "_previous_handlers", {})
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, old)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_content_and_replaces_atomically(tmp_path):
    out = tmp_path / "sub" / "out.txt"
    with atomic_write(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        tmp.write_text("new")
        assert not out.exists()  # nothing visible before the block ends
    assert out.read_text() == "new"
    with atomic_write(out) as tmp:
        tmp.write_text("newer")
    assert out.read_text() == "newer"
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == mode


def test_exception_removes_temp_and_keeps_old_file(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_refuses_an_input_also_through_a_symlink_or_hard_link(tmp_path):
    data = tmp_path / "data.h5"
    data.write_text("precious")
    (tmp_path / "link.h5").symlink_to(data)
    os.link(data, tmp_path / "hard.h5")
    for target in (data, tmp_path / "link.h5", tmp_path / "hard.h5", tmp_path / "." / "data.h5"):
        with pytest.raises(OutputIsInputError) as err:
            with atomic_write(target, inputs=[str(data), None]):
                pytest.fail("the block must not run")
        assert str(target) in str(err.value) and str(data) in str(err.value)
        assert isinstance(err.value, KdDetectError)
    assert data.read_text() == "precious"
    assert leftovers(tmp_path) == []
    with atomic_write(tmp_path / "other.h5", inputs=[data]) as tmp:  # a different file is fine
        tmp.write_text("ok")


def test_abort_and_signal_handlers_restored(tmp_path, fresh_handlers):
    before = signal.getsignal(signal.SIGTERM)
    handle = AtomicFile(tmp_path / "x")
    assert signal.getsignal(signal.SIGTERM) is not before
    handle.abort()
    handle.abort()  # twice is harmless
    assert signal.getsignal(signal.SIGTERM) is before
    assert leftovers(tmp_path) == [] and not (tmp_path / "x").exists()


def test_overlapping_files_closed_in_any_order_restore_the_handlers(tmp_path, fresh_handlers):
    before = signal.getsignal(signal.SIGTERM)
    first, second = AtomicFile(tmp_path / "a"), AtomicFile(tmp_path / "b")
    first.tmp.write_text("a")
    first.commit()  # not the last open file: the handler stays until `second` is done
    assert signal.getsignal(signal.SIGTERM) is not before
    second.abort()
    assert signal.getsignal(signal.SIGTERM) is before
    assert (tmp_path / "a").read_text() == "a" and not (tmp_path / "b").exists()


def test_sigterm_while_writing_removes_the_temp_file(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, time
        from kd_detect.io import atomic_write
        with atomic_write({str(tmp_path / 'out')!r}) as tmp:
            tmp.write_text("partial")
            print("writing", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(leftovers(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_a_dropped_writer_cleans_up(tmp_path, fresh_handlers):
    handle = AtomicFile(tmp_path / "x")
    handle.tmp.write_text("half")
    del handle
    assert leftovers(tmp_path) == [] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_signal_during_write_defers_to_a_cooperative_handler(tmp_path, fresh_handlers):
    """A Python SIGTERM handler installed before the write (Lightning's "stop after this
    step" flag) is called instead of raising: the write completes and the flag is set."""
    import os

    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with atomic_write(tmp_path / "out.txt") as tmp:
            tmp.write_text("partial")
            os.kill(os.getpid(), signal.SIGTERM)
            tmp.write_text("complete")
        assert seen == [signal.SIGTERM]
        assert (tmp_path / "out.txt").read_text() == "complete"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    finally:
        signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------- debris of killed writers
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_writer_removes_temporaries_of_killed_writers_only(tmp_path):
    target = tmp_path / "out.h5"
    dead = tmp_path / f".out.h5.pid{_dead_pid()}.abc123.tmp"
    live = tmp_path / f".out.h5.pid{os.getpid()}.def456.tmp"  # a writer still running
    other = tmp_path / f".other.h5.pid{_dead_pid()}.x.tmp"  # another target's
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    with atomic_write(target) as tmp:
        Path(tmp).write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert not dead.exists() and live.exists() and other.exists()


def test_generator_killed_mid_write_leaves_no_debris_after_a_rerun(tmp_path):
    """SIGKILL cannot be caught: the killed run leaves its temporary file; the rerun of the
    same command removes it and writes a complete file."""
    out = tmp_path / "syn.h5"
    cmd = [sys.executable, "-m", "data_prep.synthetic", "--out", str(out), "--videos", "3000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".syn.h5.pid*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the generator finished before it could be killed"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.glob(".syn.h5.pid*.tmp")) and not out.exists()  # debris, no half file
    rerun = subprocess.run([*cmd[:-1], "24"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.h5"]

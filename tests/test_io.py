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
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # also under nohup, which ignores it
    yield
    signal.signal(signal.SIGTERM, old)
    signal.signal(signal.SIGINT, old_int)


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
    # the child starts from SIGTERM's default action whatever it inherits (a launcher that
    # ignores SIGTERM passes the ignore on through exec, and atomic_write rightly keeps it)
    script = textwrap.dedent(f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise AssertionError(f"the writer ignored SIGTERM for 30 s (parent's ignored signals: {_ignored_signals()})") from err
    assert code == 128 + signal.SIGTERM
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def _ignored_signals() -> str:
    """The SigIgn mask of this process (Linux), to tell an inherited ignore from a bug."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return "unknown"
    return next((ln.split()[1] for ln in status.read_text().splitlines() if ln.startswith("SigIgn:")), "unknown")


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


# ------------------------------------------------- Ctrl-C inside a finaliser (issue 16)
class _InterruptedFinaliser:
    """Sends SIGINT to this process from ``__del__`` and keeps running Python there, so the
    handler runs inside the finaliser, where Python drops exceptions ("Exception ignored
    in ..."): what h5py's WeakValueDictionary callbacks did to Ctrl-C in 2 of 14 runs."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):
            pass


def test_ctrl_c_swallowed_by_a_finaliser_still_aborts_the_write(tmp_path, fresh_handlers, capsys):
    out = tmp_path / "out.txt"
    went_on = []
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(out) as tmp:
            Path(tmp).write_text("partial")
            _InterruptedFinaliser()  # dropped at once: its KeyboardInterrupt is swallowed
            went_on.append(True)  # Python carries on after a swallowed exception ...
    assert went_on == [True]
    assert not out.exists() and leftovers(tmp_path) == []  # ... but commit raised it again
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_the_process_ignores_stays_ignored_while_writing(tmp_path, fresh_handlers):
    """A process started with SIGINT ignored (nohup, a shell's background job) chose not to
    be interrupted by it: a write neither installs its handler for it nor restores another."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = tmp_path / "out.txt"
    with atomic_write(out) as tmp:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM is still guarded
        os.kill(os.getpid(), signal.SIGINT)  # ignored: the write goes on
        Path(tmp).write_text("done")
    assert out.read_text() == "done" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_write_loop_raises_the_swallowed_signal_at_the_next_item(tmp_path, fresh_handlers):
    from kd_detect.io import raise_pending_signal

    written = []
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "out.txt"):
        for item in range(5):
            raise_pending_signal()
            written.append(item)
            if item == 1:
                _InterruptedFinaliser()
    assert written == [0, 1]
    raise_pending_signal()  # delivered once: nothing pending any more
    assert leftovers(tmp_path) == []


def test_other_errors_in_finalisers_still_reach_the_previous_hook(tmp_path, fresh_handlers):
    class Broken:
        def __del__(self) -> None:
            raise ValueError("from a finaliser")

    seen = []
    old = sys.unraisablehook

    def previous(unraisable) -> None:
        seen.append(type(unraisable.exc_value))

    sys.unraisablehook = previous
    try:
        with atomic_write(tmp_path / "out.txt") as tmp:
            Path(tmp).write_text("complete")
            Broken()
        restored = sys.unraisablehook
    finally:
        sys.unraisablehook = old
    assert seen == [ValueError] and (tmp_path / "out.txt").read_text() == "complete"
    assert restored is previous


def test_generator_interrupted_mid_write_exits_130_in_one_line_without_debris(tmp_path):
    """Ctrl-C at three moments of a real write: status 130, one stderr line, nothing left."""
    out = tmp_path / "syn.h5"
    cmd = [sys.executable, "-m", "data_prep.synthetic", "--out", str(out), "--videos", "3000"]
    for delay in (0.0, 0.2, 0.5):
        # SIGINT as at a terminal, even when pytest itself runs with it ignored (nohup, background)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(".syn.h5.pid*.tmp")) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=60)[1].strip()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert err == f"python -m data_prep.synthetic: interrupted; {out} was not written (or kept its previous content)"
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_signal_just_after_the_temporary_file_is_created_leaves_nothing(tmp_path, fresh_handlers, monkeypatch):
    """Ctrl-C between the creation of the temporary file and the writer learning its name
    (the window tempfile.mkstemp had) must not leave the file behind."""
    import kd_detect.io as kio

    real_open = os.open

    def open_then_interrupt(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(kio.os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        AtomicFile(tmp_path / "out")
    monkeypatch.setattr(kio.os, "open", real_open)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

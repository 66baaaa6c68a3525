"""The one atomic writer: ``with atomic_write(path, inputs=(...)) as tmp: <write tmp>``.

What it guarantees, whatever writes the file (``open``, h5py, ``torch.save``, matplotlib):

* the data goes to a temporary file ``.<name>.pid<PID>.<random>.tmp`` in the target's own
  folder (same file system, so the final ``os.replace`` is atomic on POSIX); a writer that
  was killed outright (SIGKILL, power loss) cannot clean up, so the next writer of the same
  target removes the temporary files whose process no longer exists;
* on success the temporary file is fsynced, given the mode ``0o666 & ~umask`` (what a plain
  ``open`` would give, not the temporary file's 0600), renamed over ``path`` and the folder fsynced:
  readers see the old file or the complete new one, never a truncated one;
* on any exception, and on SIGTERM/SIGINT while writing (a handler that raises is
  installed in the main thread and the previous one restored afterwards), the temporary
  file is removed and ``path`` is left as it was; when the previous handler is a Python
  function (e.g. Lightning's SIGTERM flag) it is called instead and the write completes;
  a signal that lands inside a finaliser, where Python drops exceptions, is kept and
  raised again by :func:`raise_pending_signal` (long write loops call it per item, and
  ``commit`` does), so Ctrl-C is never lost;
* a ``path`` that cannot be written (its folder is read-only or virtual, a parent is a
  file, ``path`` is a folder) is refused before anything is written, with
  :class:`~kd_detect.errors.UnwritableOutputError` (:func:`ensure_writable_file`; commands
  that write a whole folder check it first with :func:`ensure_writable_dir`);
* a ``path`` that resolves (``os.path.realpath``, or ``os.path.samefile`` for hard links) to
  one of ``inputs`` is refused before anything is written, with
  :class:`~kd_detect.errors.OutputIsInputError` naming both.

:class:`AtomicFile` is the same thing as an object (``commit()`` / ``abort()``), for writers
that live across calls (``FeatureFileWriter``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from kd_detect.errors import OutputIsInputError, UnwritableOutputError

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def refuse_inputs(path: PathLike, inputs: Iterable[PathLike | None]) -> None:
    """Raise :class:`OutputIsInputError` when ``path`` is one of ``inputs`` (``None`` skipped)."""
    for inp in inputs:
        if inp is not None and _same(Path(path), Path(inp)):
            raise OutputIsInputError(f"{path}: refusing to write the output over the input {inp}")


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _writable_dir(folder: Path, named: Path, what: str, create: bool = True) -> None:
    """Prove a file can be created in ``folder`` (created when missing if ``create``, else
    its nearest existing ancestor is probed); errors name ``named`` (the folder itself, or
    the file meant to go in it)."""
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        where = "it is" if blocker == named else f"{blocker} is"
        raise UnwritableOutputError(f"{named}: cannot write here ({what}): {where} a file, not a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = next(p for p in (folder, *folder.parents) if p.is_dir())
        # named before it exists and removed in `finally`: a signal cannot leave it behind
        probe = folder / f".kd_detect_probe.{secrets.token_hex(8)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise UnwritableOutputError(f"{named}: cannot write here ({what}): {err.strerror or err}") from err


def ensure_writable_dir(path: PathLike, what: str = "output folder", create: bool = True) -> Path:
    """Create the folder ``path`` (with its parents) when missing and prove a file can be
    created in it (a probe file is created and removed: ``os.access`` lies for root and
    for virtual file systems such as /proc). ``create=False`` creates nothing: a missing
    folder is judged by its nearest existing ancestor. Raises
    :class:`UnwritableOutputError` naming ``path``, ``what`` it was meant for and why;
    returns ``path``."""
    path = Path(path)
    _writable_dir(path, path, what, create)
    return path


def ensure_writable_file(path: PathLike, what: str = "output") -> Path:
    """Check, before any work, that the file ``path`` can be written: it is not a folder
    and its folder can hold a new file (created when missing, as for
    :func:`ensure_writable_dir`). Raises :class:`UnwritableOutputError`; returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UnwritableOutputError(f"{path}: cannot write here ({what}): it is a folder, not a file")
    _writable_dir(path.parent, path, what)
    return path


def _signal_exception(signum: int) -> BaseException:
    """``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + signum)`` otherwise, marked as
    raised by our handler (so that :func:`_unraisable` recognises it)."""
    exc: BaseException = KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)
    exc.kd_detect_signal = signum  # type: ignore[attr-defined]
    return exc


def _raise_on_signal(signum: int, frame: Any) -> None:
    previous = _previous_handlers.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        # a cooperative handler (Lightning's SIGTERM flag: stop after this step) owns the
        # signal: let it decide, and finish this write (atomic either way, no debris)
        previous(signum, frame)
        return
    raise _signal_exception(signum)


def _unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a write is open. Python runs a signal handler between
    any two bytecodes, also inside a finaliser or a weakref callback (h5py's registry is a
    ``WeakValueDictionary``), where an exception cannot propagate: it is printed as
    "Exception ignored in ..." and dropped, so Ctrl-C would be lost and the write would
    finish with status 0. Our handler's exception is kept here instead and raised again
    by :func:`raise_pending_signal` (called by long write loops and by ``commit``)."""
    global _swallowed
    signum = getattr(unraisable.exc_value, "kd_detect_signal", None)
    if signum is not None:
        _swallowed = signum
        return
    (_previous_hook or sys.__unraisablehook__)(unraisable)


def raise_pending_signal() -> None:
    """Raise the SIGINT/SIGTERM exception that a finaliser swallowed during a write (see
    :func:`_unraisable`); nothing when there is none. Long write loops call it once per
    item; :meth:`AtomicFile.commit` calls it, so a swallowed signal never commits."""
    global _swallowed
    if _swallowed is not None:
        signum, _swallowed = _swallowed, None
        raise _signal_exception(signum)


SIGNALS = (signal.SIGTERM, signal.SIGINT)
_open_files = 0  # AtomicFiles not yet committed or aborted (main thread)
_previous_handlers: dict[int, Any] = {}
_previous_hook: Any = None
_swallowed: int | None = None  # a signal whose exception a finaliser swallowed


def _install_handlers() -> bool:
    """Make SIGTERM/SIGINT raise while the first open AtomicFile lives (main thread only)."""
    global _open_files, _previous_hook, _swallowed
    if threading.current_thread() is not threading.main_thread():
        return False
    if _open_files == 0:
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (nohup, a background job) stays so
                _previous_handlers[sig] = signal.signal(sig, _raise_on_signal)
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
        _swallowed = None
    _open_files += 1
    return True


def _restore_handlers() -> None:
    """Put the previous handlers back when the last open AtomicFile is done (any order)."""
    global _open_files, _previous_hook
    _open_files -= 1
    if _open_files == 0:
        for sig, handler in _previous_handlers.items():
            signal.signal(sig, handler)
        _previous_handlers.clear()
        sys.unraisablehook, _previous_hook = _previous_hook or sys.__unraisablehook__, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that were killed (their
    process is gone); a live writer's file is kept. Returns what was removed."""
    path = Path(path)
    removed = []
    pattern = re.compile(re.escape(f".{path.name}.pid") + r"(\d+)\..*\.tmp$")
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.pid*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        match = pattern.match(tmp.name)
        if match and not _alive(int(match.group(1))):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


class AtomicFile:
    """A temporary file next to ``path`` that becomes ``path`` on :meth:`commit`."""

    def __init__(self, path: PathLike, *, inputs: Iterable[PathLike | None] = ()) -> None:
        self.path = Path(path)
        refuse_inputs(self.path, inputs)
        ensure_writable_file(self.path)
        remove_stale_temporaries(self.path)
        # the handlers go in before the temporary file exists, so that a signal in between
        # cannot leave it behind (the default SIGINT handler would raise with no one to clean)
        self._handlers = _install_handlers()
        tmp = None
        try:
            # the name is known before the file exists (unlike tempfile.mkstemp, which returns
            # it after creating the file), so a signal at any point leaves nothing behind
            while True:
                tmp = self.path.parent / f".{self.path.name}.pid{os.getpid()}.{secrets.token_hex(6)}.tmp"
                try:
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    break
                except FileExistsError:  # not ours: never remove it
                    tmp = None
            self.tmp = tmp
        except BaseException as err:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            self._restore()
            if isinstance(err, OSError):  # pragma: no cover - the folder changed since the probe
                raise UnwritableOutputError(f"{self.path}: cannot write here (output): {err.strerror or err}") from err
            raise

    def _restore(self) -> None:
        if self._handlers:
            self._handlers = False
            _restore_handlers()

    def commit(self) -> Path:
        """fsync, set the umask mode, rename over ``path``, fsync the folder (not when a
        signal arrived during the write: see :func:`raise_pending_signal`)."""
        try:
            if self._handlers:
                raise_pending_signal()
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
            try:
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
            except OSError:  # pragma: no cover - folders that cannot be opened (some platforms)
                return self.path
            try:
                os.fsync(dir_fd)
            except OSError:  # pragma: no cover - file systems without directory fsync
                pass
            finally:
                os.close(dir_fd)
            return self.path
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        finally:
            self._restore()

    def abort(self) -> None:
        """Remove the temporary file; ``path`` is left untouched."""
        try:
            self.tmp.unlink(missing_ok=True)
        finally:
            self._restore()

    def __del__(self) -> None:
        # a writer dropped without commit/abort (an exception its caller did not handle):
        # remove its temporary file and give the signal handlers back
        if getattr(self, "_handlers", False) or getattr(self, "tmp", None) is not None and self.tmp.exists():
            try:
                self.abort()
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass


@contextmanager
def atomic_write(path: PathLike, *, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path`` (see module doc)."""
    handle = AtomicFile(path, inputs=inputs)
    try:
        yield handle.tmp
    except BaseException:
        handle.abort()
        raise
    handle.commit()


MIB = 1 << 20


def content_hash(path: PathLike, span: int = MIB) -> str:
    """SHA-256 of ``size``, the first ``span`` bytes (the HDF5 superblock and root header
    live there) and the last ``span`` bytes of ``path``: a cheap content identity that reads
    at most ``2 * span`` bytes whatever the file size. Two files with equal hashes are
    treated as the same content; a change anywhere else in a large file goes unseen (the
    mtime in :func:`file_identity` covers in-place edits of the same file)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            digest.update(fh.read(span))
    return digest.hexdigest()


def file_identity(path: PathLike) -> dict[str, Any]:
    """``{size, mtime_ns, sha256}`` of ``path`` (``sha256`` is :func:`content_hash`): what
    a verdict about the file (e.g. its validation) is cached under."""
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": content_hash(path)}

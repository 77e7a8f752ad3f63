"""Safe output folders: what may be replaced, a lock per output, staging beside it, and one-rename swaps.

The rules, so that no run ever destroys data:

* only a folder that is itself a reprune checkpoint (it holds ``reprune_report.json``) may be replaced,
  and never the input model, a folder that contains it, or a folder inside it;
* a lock file ``.NAME.lock`` beside the output makes a second run writing the same output fail at once;
* the new output is written into a staging folder ``.NAME.partial-PID-XXXX`` beside the target (created
  with the user's umask); the old output stays whole until the new one is complete, then it is renamed
  aside (``.NAME.old-PID-XXXX``), the new one renamed in, and the old one deleted, with SIGINT and SIGTERM
  held back meanwhile;
* an interrupted write (SIGINT, SIGTERM, any error) removes its staging folder, and a later run removes
  stale staging folders of this naming pattern (or puts back an old output a crash left aside).

Nothing here imports torch, so the CLI can check outputs before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from reprune.record import RECORD_FILE

STAGING_TAG = ".partial-"
ASIDE_TAG = ".old-"
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


class UnsafeOutputError(OutputExistsError):
    """Replacing the output would destroy data that is not a reprune checkpoint (or is the input model)."""


class OutputBusyError(FileExistsError):
    """Another run is writing the same output folder right now."""


class OutputNotWritableError(ValueError):
    """The output folder cannot be created or written (a file, a read-only place, /proc ...)."""


def is_checkpoint(folder: Path) -> bool:
    """True for a folder reprune wrote: the only kind ``--overwrite`` may replace."""
    return folder.is_dir() and (folder / RECORD_FILE).is_file()


def _protect(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, holds or lies inside an input folder: writing there would modify the input."""
    for item in inputs:
        source = Path(item).resolve()
        if out == source or out in source.parents:
            raise UnsafeOutputError(
                f"--out {out} {'is' if out == source else 'contains'} the input model {source}; reprune never "
                "modifies its input. Choose an output folder outside it.")
        if source in out.parents:
            raise UnsafeOutputError(
                f"--out {out} lies inside the input model {source}; reprune never modifies its input. "
                "Choose an output folder outside it.")


def probe_writable(out: Path) -> None:
    """Create and remove a folder where ``out``'s staging will go: unlike ``os.access``, this also holds for
    root (who may write anywhere but /proc) and for read-only mounts."""
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise OutputNotWritableError(f"{out} cannot be written: {existing} is a file, not a folder; choose another path.")
    probe = existing / f".reprune-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise OutputNotWritableError(
            f"{out} cannot be written ({existing}: {err.strerror}); choose a folder you can write to.") from None


def write_json(path: str | Path, data: Any) -> None:
    """Replace ``path`` with ``data`` in one rename, so a reader (or a crash) never sees half a file."""
    path = Path(path)
    staging = _sibling(path, STAGING_TAG)
    try:
        staging.write_text(json.dumps(data, indent=2, default=str))
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def check_output_dir(out_dir: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output that exists (unless it is a checkpoint and ``overwrite``), that is
    or holds one of ``inputs``, or that cannot be written; returns the resolved path."""
    out = Path(out_dir).expanduser().resolve()
    _protect(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputNotWritableError(f"--out {out} is an existing file, not a folder; choose another --out.")
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"Output folder {out} already exists; choose another --out or pass --overwrite")
        if not is_checkpoint(out):
            raise UnsafeOutputError(
                f"Output folder {out} exists and is not a reprune checkpoint (no {RECORD_FILE}); reprune replaces "
                "only its own checkpoints. Choose another --out, or move the folder away yourself.")
    probe_writable(out)
    return out


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, so a rename sequence is never cut in half.

    Python-level handlers, not ``pthread_sigmask``: the kernel may deliver a process signal to any thread
    (torch starts several), but Python runs handlers in the main thread, so recording them here holds
    back every signal, whichever thread received it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.signal(signum, lambda received, _frame: pending.append(received))
                for signum in _HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in pending:
            signal.raise_signal(signum)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (staging cleanup) run, as they do for SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _sibling(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}{tag}{os.getpid()}-{secrets.token_hex(4)}")


def _remove_stale(out: Path) -> None:
    """Under the lock nothing else writes ``out``: leftovers of our naming pattern are from dead runs."""
    for path in sorted(out.parent.glob(f".{out.name}{ASIDE_TAG}*")):
        if out.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:  # a crash between the two renames of a swap: the old output goes back
            path.rename(out)
    for path in out.parent.glob(f".{out.name}{STAGING_TAG}*"):
        shutil.rmtree(path, ignore_errors=True)


class OutputReservation:
    """The lock on one output folder, held from the checks before the work until the result is in place.

    :func:`reserve_output` hands the same reservation to nested callers in this process (the CLI reserves
    before loading the model; ``save_pruned`` then writes under that reservation).
    """

    def __init__(self, out: Path, overwrite: bool, inputs: tuple[Path, ...]) -> None:
        self.out, self.overwrite, self.inputs = out, overwrite, inputs
        self.lock_path = out.with_name(f".{out.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise OutputBusyError(
                        f"Another reprune run is writing {self.out} right now (lock {self.lock_path}); wait for it "
                        "to finish or choose another --out.") from None
                raise
            try:  # the holder before us may have removed the file we opened: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        try:
            _remove_stale(self.out)
            check_output_dir(self.out, self.overwrite, self.inputs)  # again: another run may have finished
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder beside the output to write into; it replaces the output only when the block ends
        without error, and is removed on any error, SIGINT or SIGTERM."""
        staging = _sibling(self.out, STAGING_TAG)
        try:
            staging.mkdir()  # mode 0o777 & ~umask, like any folder the user creates
            yield staging
            check_output_dir(self.out, self.overwrite, self.inputs)  # nothing else put a folder there meanwhile
            with signals_held():
                if self.out.exists():
                    aside = _sibling(self.out, ASIDE_TAG)
                    self.out.rename(aside)
                    staging.rename(self.out)
                    shutil.rmtree(aside)
                else:
                    staging.rename(self.out)
        except BaseException:
            with signals_held():
                shutil.rmtree(staging, ignore_errors=True)
            raise


_held: dict[Path, OutputReservation] = {}


@contextlib.contextmanager
def reserve_output(out_dir: str | Path, overwrite: bool = False,
                   inputs: Iterable[str | Path] = ()) -> Iterator[OutputReservation]:
    """Check ``out_dir`` (see :func:`check_output_dir`) and lock it until the block ends; meanwhile SIGTERM
    unwinds like SIGINT, so the staging folder and the lock are removed whenever the run is stopped."""
    resolved = tuple(Path(p).resolve() for p in inputs)
    out = check_output_dir(out_dir, overwrite, resolved)
    if out in _held:  # a nested call (save_pruned inside the CLI's reservation) writes under the same lock
        yield _held[out]
        return
    with sigterm_unwinds():
        reservation = OutputReservation(out, overwrite, resolved)
        reservation.acquire()
        _held[out] = reservation
        try:
            yield reservation
        finally:
            del _held[out]
            reservation.release()

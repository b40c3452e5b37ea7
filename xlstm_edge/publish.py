"""Atomic publishing of an output directory: checkpoints, exported packages and quantized packages.

Every command that writes a directory writes it into a hidden staging directory beside it,
``.NAME.partial-PID-TOKEN``, and renames that into place only when it is complete:

    with publishing(Path("pkg"), replace=force) as tmp:
        ...write files into tmp...
    # pkg now exists, complete; on any exception (Ctrl-C and SIGTERM too) tmp is gone and pkg untouched

The staging directory gets the mode a plain ``mkdir`` would (0777 less the umask), so the finished
directory is readable like any other (``tempfile.mkdtemp``'s 0700 would stay on it). A process killed
outright (SIGKILL, out of memory) cannot clean up: the next ``publishing`` of the same NAME removes
staging directories whose process is gone (``remove_stale``). ``handle_sigterm`` makes SIGTERM remove
this process's staging directories and exit with status 143 (128 + 15) at once. It does not raise
into the running code: an exception raised from a signal handler in the middle of torch's exporters
crashed the interpreter now and then (SIGSEGV instead of a clean exit).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old|probe)-(?P<pid>\d+)-[0-9a-f]+$")


class PublishError(ValueError):
    """The output directory cannot be published (exists without replace, parent missing...): one line."""


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-*`` / ``.NAME.old-*`` directories beside ``out`` whose process is gone.

    Returns what was removed. A directory of a live process (a concurrent run) is left alone.
    """
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _STAGING.match(p.name)
        if m and m["name"] == out.name and p.is_dir() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def check_target(out: Path, replace: bool, error: type[Exception] = PublishError) -> None:
    """Raise ``error`` (one line) if ``out`` cannot be published: it exists (without ``replace``) or is
    not a directory, or its parent directory does not exist."""
    if out.exists() and not replace:
        raise error(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a directory")
    if not out.parent.is_dir():
        raise error(f"parent directory {out.parent} does not exist")


_ACTIVE: set[Path] = set()  # this process's staging directories (SIGTERM removes them)


def staging_dir(out: Path, kind: str = "partial") -> Path:
    """A new, empty hidden directory beside ``out`` with a plain directory's mode."""
    tmp = out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # mode 0777 & ~umask, as any directory the user makes
    _ACTIVE.add(tmp)
    return tmp


def move_into_place(tmp: Path, out: Path, replace: bool, error: type[Exception] = PublishError) -> None:
    """Rename the finished ``tmp`` to ``out``. With ``replace`` an existing ``out`` is moved aside first,
    then deleted (or put back if the swap fails)."""
    _ACTIVE.discard(tmp)
    if not out.exists():
        os.replace(tmp, out)
        return
    if not replace:
        raise error(f"{out} appeared while it was being written; not replacing it without --force")
    old = staging_dir(out, "old")
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def plain_modes(root: Path) -> None:
    """Give ``root`` and everything in it the modes a plain mkdir / open would (0777 / 0666 less the
    umask): some writers create files 0600 (safetensors) or directories 0700 (``tempfile.mkdtemp``)."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def publishing(out: str | os.PathLike[str], *, replace: bool = False,
               error: type[Exception] = PublishError) -> Iterator[Path]:
    """Yield a staging directory for ``out``; publish it when the block ends normally, remove it otherwise.

    ``error`` is the exception class raised for a target that cannot be published (``check_target``).
    """
    out = Path(out)
    check_target(out, replace, error)
    remove_stale(out)
    tmp = staging_dir(out)
    try:
        yield tmp
        plain_modes(tmp)
        move_into_place(tmp, out, replace, error)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _clean_exit(signum: int, frame: object) -> None:
    for tmp in list(_ACTIVE):
        shutil.rmtree(tmp, ignore_errors=True)
    os._exit(128 + signum)


def handle_sigterm() -> None:
    """On SIGTERM remove this process's staging directories and exit with 128 + 15 at once.

    Only from the main thread (``signal`` refuses elsewhere); a no-op there otherwise.
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _clean_exit)


__all__ = ["PublishError", "check_target", "handle_sigterm", "move_into_place", "plain_modes", "publishing", "remove_stale",
           "staging_dir"]

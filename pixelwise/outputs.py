"""Every file pixelwise writes goes through here, so one rule holds for every output of every command.

- A file is written whole or not at all: the bytes go to a hidden ``.NAME.<pid>.tmp`` beside it,
  are flushed to disk, and a rename puts them in place. A crash, a kill or a full disk leaves the
  old file (or none), never half of one.
- An existing file is replaced only when the caller says so (``replace=True``, a command's
  ``--overwrite``); :func:`claim_output` checks that before any work starts.
- A link at an output name is replaced by the new file, never followed: the rename swaps the
  directory entry, so a planted symlink cannot redirect a write outside the output folder.
- A full disk (or quota, or file-size limit) is one sentence naming the path, how much was needed
  and how much is free; the temporary file is removed.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pixelwise.errors import PixelwiseError

# Errors that mean "the device is full", whatever the cause: no blocks, a quota, a size limit.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TMP_COUNTER = itertools.count()


def claim_output(path: Path, flag: str, *, overwrite: bool, example: str) -> Path:
    """Check early, before any work, that ``path`` may be written: not a folder, not an existing
    file unless ``overwrite``, and its folder creatable. Returns ``path``."""
    if path.is_dir() and not path.is_symlink():
        raise PixelwiseError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}.")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise PixelwiseError(
            f"{flag} {path} already exists; pass --overwrite to replace it or choose another name."
        )
    output_folder(path.parent, f"{flag} {path}: the folder")
    return path


def write_bytes(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see the module's rules).

    Raises:
        PixelwiseError: when ``path`` exists and ``replace`` is False, or the device is full.
    """
    _write_atomic(path, len(data), lambda handle: handle.write(data), replace=replace)


def write_text(path: Path, text: str, *, replace: bool = True) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"), replace=replace)


def write_with(path: Path, writer: Callable[[BinaryIO], object], *, replace: bool = True) -> None:
    """Serialise with ``writer(buffer)`` in memory first (so a writer that fails or aborts on a full
    disk never touches it), then :func:`write_bytes` the result."""
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes(path, buffer.getvalue(), replace=replace)


def append_line(path: Path, line: str) -> None:
    """Append one line to a log such as ``metrics.jsonl``; on a full disk the file is cut back to
    where it was, so no half line is left for a reader to choke on."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        start = handle.tell()
        try:
            handle.write(data)
            handle.flush()
        except OSError as error:
            if error.errno not in _SPACE_ERRNOS:
                raise
            try:
                handle.truncate(start)
            except OSError:
                pass
            raise space_error(path, len(data)) from None


def space_error(path: Path, needed: int) -> PixelwiseError:
    """The sentence for a write of ``needed`` bytes to ``path`` that found the device full."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    has = f"{human_bytes(free)} is free there" if free is not None else "the free space is unknown"
    return PixelwiseError(
        f"No space left to write {path}: it needs about {human_bytes(needed)} and {has}; "
        "free some space or write to another folder. Nothing was left half-written."
    )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _write_atomic(
    path: Path, size: int, fill: Callable[[BinaryIO], object], *, replace: bool
) -> None:
    if not replace and (path.exists() or path.is_symlink()):
        raise PixelwiseError(
            f"{path} already exists; pass --overwrite to replace it or choose another name."
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TMP_COUNTER)}.tmp")
    try:
        with _open_new(tmp) as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _SPACE_ERRNOS:
            raise space_error(path, size) from None
        raise
    fsync_folder(path.parent)


def output_folder(path: Path, flag: str) -> Path:
    """Create ``path`` (and its parents) for output, or refuse in one sentence before any work."""
    if path.exists() and not path.is_dir():
        raise PixelwiseError(
            f"{flag} {path} is a file, not a folder; give a folder for the outputs."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PixelwiseError(
            f"{flag} {path} cannot be created ({(error.strerror or str(error)).lower()}); "
            "give a folder you may write to."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PixelwiseError(f"{flag} {path} is not writable; give a folder you may write to.")
    return path


def _open_new(path: Path) -> BinaryIO:
    """A new file for writing; O_EXCL: the temporary name is never an existing file or a link."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def fsync_folder(folder: Path) -> None:
    """Make a rename durable where the platform allows opening a folder (not Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

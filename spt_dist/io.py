"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every file the project writes under its final name goes through `atomic_path` (write to a
temporary name unique to the writer in the same folder, fsync it, rename it over the target,
fsync the folder), so an interrupted or failed write leaves no truncated file under a final
name and no temporary file behind. Three writes are atomic otherwise: a checkpoint's files
(written inside its temporary step folder, which is renamed whole), the run lock (created with
O_EXCL) and metrics.jsonl (appended, a line at a time). A write that fails for want of space
is reported as DiskFullError ("no space left on <folder> ..."), whatever library wrote the
bytes: safetensors and torch do not raise OSError (`is_disk_full` recognises them).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from spt_dist.errors import SptError

PathLike = Union[str, os.PathLike]

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Errors that say what went wrong and are not a full disk, even where the folder shows no free
# block (a read-only or pseudo file system reports 0 available blocks too).
_NOT_FULL_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                    errno.EFBIG, errno.EINVAL)
# What libraries that hide the OSError say: safetensors ("... No space left on device (os error
# 28)"). torch's zip writer says "unexpected pos ..." once its stream has failed for any reason:
# that counts only where the folder's file system has no free block left.
_FULL_WORDS = ("No space left", "Disk quota exceeded", f"os error {errno.ENOSPC}", f"os error {errno.EDQUOT}")
_NOT_FULL_WORDS = tuple(f"os error {e}" for e in _NOT_FULL_ERRNOS)


class DiskFullError(SptError, OSError):
    """No space (or quota) left where a file had to be written."""


def is_disk_full(exc: BaseException, folder: Optional[PathLike] = None) -> bool:
    """Whether `exc` (or an error it was raised from) is a write that ran out of space. An error
    that names another cause (permission, read-only file system, file-size limit, ...) never is;
    with `folder`, an I/O error that names no cause counts when that folder's file system has no
    free block."""
    seen, causeless = exc, True
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno in _FULL_ERRNOS:
                return True
            if seen.errno in _NOT_FULL_ERRNOS:
                return False
            causeless = False
        text = str(seen)
        if any(word in text for word in _FULL_WORDS):
            return True
        if any(word in text for word in _NOT_FULL_WORDS):
            return False
        seen = seen.__cause__ or seen.__context__
    if folder is not None and causeless and isinstance(exc, (OSError, RuntimeError)):
        try:
            return os.statvfs(folder).f_bavail == 0
        except OSError:
            return False
    return False


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` for the caller (or any library) to write; on
    success it is fsynced and renamed to `path`. On any failure the temporary file is removed;
    a failure for want of space is raised as DiskFullError naming the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        try:
            _fsync(path.parent, directory=True)
        except OSError:  # some file systems cannot fsync a folder; the rename is done
            pass
    except Exception as exc:
        if not isinstance(exc, DiskFullError) and is_disk_full(exc, path.parent):
            raise DiskFullError(f"no space left on {path.parent} while writing {path.name} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        raise
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

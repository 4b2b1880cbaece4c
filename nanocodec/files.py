"""Writing files so that a kill or a full disk at any moment loses nothing already saved.

Owns `write_atomic` (a whole file appears under its name or the old one stays), `fsync` (flush
a file or a folder to disk) and `umask_mode` (the permissions a new file gets), used by the tokenizer (nanocodec.bpe), the prepared folder
(nanocodec.prepare), checkpoints (nanocodec.checkpoint) and compressed files (nanocodec.compress).
Imports nothing from nanocodec, so any module may use it. Does not own the multi-file protocols
built on top (a checkpoint's staging folder, prepare's run state) nor cleaning up the `.tmp` files
a killed process leaves (their owners know which names are theirs).
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode(path: str | os.PathLike) -> None:
    """Give `path` the permissions a newly created file gets under the umask (safetensors, for one,
    creates its files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (a str as UTF-8) to `path` so that `path` holds either its old contents or all of
    `data`, whatever happens: a temporary `<name>.<pid>.<random>.tmp` in the same folder is written
    and flushed to disk, renamed over `path` (os.replace), then the folder is flushed so the rename
    itself survives a power loss. The file gets the permissions a newly created file gets under the
    umask (not mkstemp's 0600). On any failure the temporary file is removed and `path` untouched.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)

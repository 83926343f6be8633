"""Atomic file writes: a temporary file in the same folder, fsync, rename. A reader (or a rerun after
a crash) sees the old file or the new one, never a half-written one; a killed writer leaves at
most a ``.<name>.<random>.torchslim-tmp`` file, which the next run of a recipe removes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_SUFFIX = ".torchslim-tmp"  # temporary files are ".<target name>.<random><TMP_SUFFIX>"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(raw)

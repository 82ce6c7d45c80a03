"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success, flush it to disk and rename it into place.

    A crash at any point leaves either the old file or the new one, never a partial file.
    The file gets the usual permissions (``0o666`` minus the umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def write_json_atomic(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")

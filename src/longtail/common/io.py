"""Atomic writes: outputs appear only when complete (write to a temp path, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from longtail.common.errors import LongtailError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` if the block succeeds.

    ``suffix`` defaults to the target's own suffix so that writers that look at the extension
    (``np.savez``, ``cv2.imwrite``) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "JSON file", hint: str | None = None,
              object_hook=None) -> Any:
    """Read JSON with an error that names the file and says what to do (``hint``); ``object_hook`` as
    ``json.load``'s."""
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"{what} not found: {path}. " + (hint or "Run the stage that produces it first "
                                                             "(see the README's stage map) or fix the path."))
    try:
        with open(path) as f:
            return json.load(f, object_hook=object_hook)
    except json.JSONDecodeError as e:
        raise LongtailError(f"{what} {path} is not valid JSON ({e}); "
                            + (hint or "delete it and rerun its stage.")) from e

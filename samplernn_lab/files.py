"""Atomic writes: a temporary file in the same folder, renamed over the target when complete.

A write that fails (a full disk, a file too large, a read-only folder) leaves the previous file whole and
raises one :class:`~samplernn_lab.errors.LabError` naming the file (:func:`writing`). A process killed while
writing (kill -9) can leave its temporary file, ``.NAME.XXXXXXXX.tmp``, never a half-written ``NAME``; whoever
next owns the folder removes those (:func:`remove_temporaries`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LabError


def refuse_existing(paths, setting: str = "--out") -> None:
    """Refuse to write over files that are there already (the lab cannot tell whether it made them): one
    LabError naming the first, the setting to change and ``--overwrite``."""
    for p in paths:
        if os.path.lexists(p):
            raise LabError(f"{p}: exists; choose another {setting}, or pass --overwrite to replace it")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def plain_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (private) the mode a plain one gets under the umask."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    A reader never sees a half-written file, and a crash or Ctrl-C leaves the old file whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        plain_mode(tmp)  # mkstemp makes the file private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically; a failed write raises LabError (see :func:`writing`)."""
    with writing(path), atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_error(path: str | os.PathLike, error: BaseException) -> LabError:
    """The one-line LabError of a failed write of ``path``: the reason, and whether a previous file is kept."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:  # torch and libsndfile report a failed write as a RuntimeError without the system's reason
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        reason = f"{first[:160]}; is the disk full?"
    kept = "the previous file is kept" if Path(path).exists() else "nothing was written"
    return LabError(f"{path}: could not write it ({reason}); {kept}")


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write inside the block (OSError, or the RuntimeError torch and libsndfile raise) into
    :func:`write_error`'s LabError naming ``path``. Wrap only the writing, so that a bug elsewhere is not
    reported as a full disk."""
    try:
        yield
    except LabError:
        raise
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from None


# What :func:`atomic_path` names its temporary files (``tempfile.mkstemp``: 8 random characters).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` and below when its process was killed.

    Call it only while holding the folder (a run's lock): another process's write in progress looks the same.
    Returns the paths removed.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp")):
        if _TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

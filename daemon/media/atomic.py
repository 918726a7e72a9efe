"""Atomic outputs: write under a temporary name in the target folder, rename on success only."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def partial_path(path: Path) -> Path:
    """`dir/.name.partial.ext`: hidden, same folder (so the rename is atomic), same extension
    (so encoders pick the format from it), and matched by the `*.partial.*` git ignore rule."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class AtomicPath:
    """A temporary sibling of `path`: it becomes `path` on `commit()`, vanishes on `discard()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = partial_path(path)
        remove_path(self.tmp)  # a leftover from a killed run

    def commit(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)  # os.replace cannot replace a non-empty folder
        os.replace(self.tmp, self.path)
        log.debug("wrote %s", self.path)

    def discard(self) -> None:
        try:
            remove_path(self.tmp)
        except OSError as exc:
            log.warning("could not remove the partial output %s: %s", self.tmp, exc)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield the temporary path to write; it becomes `path` only if the block succeeds."""
    target = AtomicPath(path)
    try:
        yield target.tmp
    except BaseException:
        target.discard()
        raise
    try:
        target.commit()
    except BaseException:
        target.discard()
        raise

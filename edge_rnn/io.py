"""Crash-safe file writing and the one error type the CLI turns into a one-line message.

Everything the toolkit writes (weights, configs, vocabularies, bundles) goes to a temporary file
or folder beside the target and is renamed into place, so an interrupted run never leaves a half
written file where a good one was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class EdgeRNNError(Exception):
    """A user-facing error: bad input, a missing or corrupt file. The CLI prints it in one line."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix: some writers (mx.save_safetensors) append theirs when it is missing
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Build a whole folder in a temporary sibling, then move it into place.

    An existing non-empty ``path`` is an error unless ``force``; it is replaced only after the new
    folder is complete, so an interrupted build leaves the old one (or nothing) behind.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not force:
        raise EdgeRNNError(f"{path} exists and is not empty (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
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
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

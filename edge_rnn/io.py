"""Crash-safe file writing and the one error type the CLI turns into a one-line message.

Everything the toolkit writes (weights, configs, vocabularies, bundles) goes to a temporary file
or folder beside the target and is renamed into place, so an interrupted run never leaves a half
written file where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class EdgeRNNError(Exception):
    """A user-facing error: bad input, a missing or corrupt file. The CLI prints it in one line."""


def _why(err: OSError) -> str:
    """An OSError in words; mkdir over a file says 'File exists', which misleads."""
    if isinstance(err, FileExistsError) or err.errno == 20:  # ENOTDIR
        return f"{err.filename} is a file, not a folder"
    return err.strerror or str(err)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def normal_mode(path: Path, directory: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open(..., "w")``/``mkdir`` would (0666/0777 less the
    umask): ``mkstemp``/``mkdtemp`` create 0600/0700, which would make every renamed-into-place file
    unreadable to anyone but its writer (a bundle served by a web server, copied into an app)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # keep the real suffix: some writers (mx.save_safetensors) append theirs when it is missing
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise EdgeRNNError(f"could not write {path}: {_why(err)}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # a writer may have replaced the file: set the mode on what is there now
            normal_mode(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise EdgeRNNError(f"could not write {path}: {_why(err)}") from None
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as err:
        raise EdgeRNNError(f"could not write {path}: {_why(err)}") from None
    try:
        yield tmp
        _normal_tree(tmp)
        if path.exists():
            old = _old(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        raise EdgeRNNError(f"could not write {path}: {_why(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: Path) -> None:
    """Finish an ``atomic_dir`` replacement cut between its two renames (old moved aside, new not
    yet in place): put the old folder back, so a crash there loses nothing."""
    path = Path(path)
    if not path.exists() and _old(path).is_dir():
        os.replace(_old(path), path)


def _normal_tree(root: Path) -> None:
    """``normal_mode`` for a folder built in ``mkdtemp`` and every file written in it with mkstemp."""
    normal_mode(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            normal_mode(Path(dirpath) / name, directory=True)
        for name in filenames:
            mode = os.stat(Path(dirpath) / name).st_mode
            if mode & 0o077 == 0:  # written by mkstemp (0600): a file written plainly keeps its mode
                normal_mode(Path(dirpath) / name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_safetensors(path: Path) -> None:
    """Raise unless ``path`` holds every byte its safetensors header promises.

    MLX's writer does not report failed writes (writing to /dev/full succeeds), so a full disk
    would leave a truncated file that the rename then puts over a good one: check before renaming.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        complete = path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        complete = False
    if not complete:
        raise EdgeRNNError(f"could not write {path.name}: the file is incomplete (disk full?)")


@contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Silence the root logger up to ``level`` meanwhile: ONNX Runtime's converters and
    quantizers log advice (pre-processing, shapes, optimizations) that users cannot act on."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)

"""Use a fast BLAS under MLX's CPU backend on Linux.

The Linux ``mlx-cpu`` wheel links netlib's *reference* BLAS (about 4 GFLOP/s here against ~130 for
OpenBLAS). MLX calls ``cblas_sgemm`` through the dynamic linker, so loading OpenBLAS with
``RTLD_GLOBAL`` *before the first* ``import mlx.core`` makes those calls resolve to OpenBLAS: no
``LD_PRELOAD``, no rebuilt wheel. Results are the same matrix products, so they agree to float32
rounding either way.

Two sources, tried in this order by ``auto``: a system OpenBLAS (Debian's ``libopenblas0-pthread``)
and Intel MKL from PyPI (the ``mkl`` wheel, a dependency on Linux x86-64, so a fresh
``pip install`` with nothing else gets a fast BLAS too; its ``libmkl_rt`` exports the standard
unprefixed ``cblas_sgemm``, unlike ``scipy-openblas32`` whose symbols are renamed ``scipy_cblas_*``).

``EDGE_RNN_BLAS`` chooses: unset or ``auto`` (both, in that order), ``openblas`` or ``mkl`` (only that
one), ``off`` (keep the reference BLAS), or a path to a CBLAS shared library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ENV = "EDGE_RNN_BLAS"
FIX = "pip install mkl, or apt-get install libopenblas0-pthread (or set EDGE_RNN_BLAS=/path/to/libblas.so)"

_CANDIDATES = [
    f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libblas.so.3",
    f"/usr/lib/{platform.machine()}-linux-gnu/openblas-openmp/libblas.so.3",
    f"/usr/lib/{platform.machine()}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
]

loaded: str | None = None  # path of the BLAS we loaded, for `edge-rnn info` and benchmarks


def _find() -> str | None:
    """A system OpenBLAS, if one is installed."""
    for path in _CANDIDATES:
        if Path(path).exists():
            return path
    return ctypes.util.find_library("openblas")


def _wheel_file(dist: str, prefix: str) -> str | None:
    """The first file of installed distribution ``dist`` whose name starts with ``prefix``."""
    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    for f in found.files or []:
        if f.name.startswith(prefix):
            path = Path(found.locate_file(f)).resolve()
            if path.exists():
                return str(path)
    return None


def _find_mkl() -> str | None:
    """MKL's single dynamic library from the ``mkl`` wheel (installed under ``<prefix>/lib``).

    ``libmkl_rt`` picks its threading layer at run time and opens Intel's OpenMP runtime by name;
    the wheel puts that in another distribution's folder, so load ``intel-openmp``'s copy first.
    """
    path = _wheel_file("mkl", "libmkl_rt.so")
    if path is not None:
        omp = _wheel_file("intel-openmp", "libiomp5.so")
        if omp is not None:
            ctypes.CDLL(omp, mode=ctypes.RTLD_GLOBAL)
        else:
            os.environ.setdefault("MKL_THREADING_LAYER", "SEQUENTIAL")
    return path


def _sources(choice: str) -> list:
    """What to try, in order: each is a function returning a library path or None."""
    if choice in {"", "auto"}:
        return [_find, _find_mkl]
    if choice == "openblas":
        return [_find]
    if choice == "mkl":
        return [_find_mkl]
    return [lambda: choice]


def load() -> str | None:
    """Load a fast BLAS globally if we are on Linux and MLX is not imported yet.

    Returns the loaded path, or None. Never raises: a missing BLAS only costs speed, so it is a
    one-line warning, not an error. In ``auto`` a library that is found but does not load (a
    dangling ``libopenblas.so.0`` link in the linker cache) falls through to the next source.
    """
    global loaded
    choice = os.environ.get(ENV, "auto").strip()
    if loaded or sys.platform != "linux" or choice.lower() in {"off", "0", "none", "reference"}:
        return loaded
    if "mlx.core" in sys.modules:
        return None  # too late to change what MLX's symbols resolve to
    failures = []
    for source in _sources(choice if os.sep in choice else choice.lower()):
        path = None
        try:
            path = source()
            if path is not None:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                loaded = path
                return path
        except OSError as err:
            failures.append(f"could not load BLAS {path!r} ({err})")
    if failures:
        print(f"edge-rnn: {'; '.join(failures)}; using the reference BLAS", file=sys.stderr)
    else:
        print(f"edge-rnn: MLX will use the slow reference BLAS; for ~30x faster training: {FIX}",
              file=sys.stderr)
    return None

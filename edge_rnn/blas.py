"""Use a fast BLAS under MLX's CPU backend on Linux.

The Linux ``mlx-cpu`` wheel links netlib's *reference* BLAS (about 4 GFLOP/s here against ~130 for
OpenBLAS). MLX calls ``cblas_sgemm`` through the dynamic linker, so loading OpenBLAS with
``RTLD_GLOBAL`` *before the first* ``import mlx.core`` makes those calls resolve to OpenBLAS: no
``LD_PRELOAD``, no rebuilt wheel. Results are the same matrix products, so they agree to float32
rounding either way.

``EDGE_RNN_BLAS`` chooses: unset or ``auto`` (search the usual places), ``off`` (keep the reference
BLAS), or a path to a CBLAS shared library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path

ENV = "EDGE_RNN_BLAS"
FIX = "apt-get install libopenblas0-pthread (or set EDGE_RNN_BLAS=/path/to/libblas.so)"

_CANDIDATES = [
    f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libblas.so.3",
    f"/usr/lib/{platform.machine()}-linux-gnu/openblas-openmp/libblas.so.3",
    f"/usr/lib/{platform.machine()}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
]

loaded: str | None = None  # path of the BLAS we loaded, for `edge-rnn info` and benchmarks


def _find() -> str | None:
    for path in _CANDIDATES:
        if Path(path).exists():
            return path
    return ctypes.util.find_library("openblas")


def load() -> str | None:
    """Load a fast BLAS globally if we are on Linux and MLX is not imported yet.

    Returns the loaded path, or None. Never raises: a missing BLAS only costs speed, so it is a
    one-line warning, not an error.
    """
    global loaded
    choice = os.environ.get(ENV, "auto").strip()
    if loaded or sys.platform != "linux" or choice.lower() in {"off", "0", "none", "reference"}:
        return loaded
    if "mlx.core" in sys.modules:
        return None  # too late to change what MLX's symbols resolve to
    path = _find() if choice.lower() in {"", "auto"} else choice
    if path is None:
        print(f"edge-rnn: MLX will use the slow reference BLAS; for ~30x faster training: {FIX}",
              file=sys.stderr)
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        print(f"edge-rnn: could not load BLAS {path!r} ({err}); using the reference BLAS",
              file=sys.stderr)
        return None
    loaded = path
    return path

"""Optional compiled kernels: vectorised sigmoid/tanh and softmax cross-entropy for MLX on x86 CPUs.

MLX's CPU backend evaluates transcendental functions one element at a time on x86, which makes the
gates of the recurrent cells and the softmax of a 10k-word output layer the slowest part of
training there. ``_ext`` (``kernels.cpp``) computes them with AVX2+FMA, 8 floats at a time, on all
cores. It is optional: nothing requires it, and without it every caller uses MLX's own ops.

Build it in place (needs g++, CMake >= 3.25 and ``pip install "nanobind>=3,<4"``)::

    python -m edge_rnn.ext            # or: python -m edge_rnn.ext --clean

``EDGE_RNN_EXT=off`` ignores a built extension (to compare, or to rule it out).
"""

from __future__ import annotations

import importlib
import os

import mlx.core as mx

API = 2  # the kernels' signatures this package calls (kernels.cpp sets the same)
_ext = None
error: str | None = None  # why the extension is not in use, for `edge-rnn info` and benchmarks
if os.environ.get("EDGE_RNN_EXT", "auto").strip().lower() in {"off", "0", "none"}:
    error = "disabled by EDGE_RNN_EXT"
else:
    try:
        _ext = importlib.import_module("edge_rnn.ext._ext")
    except ImportError as err:  # not built (the usual case on a fresh clone), or built for another MLX
        error = f"not built ({err})"
    else:
        if getattr(_ext, "mlx_version", None) != mx.__version__:
            error = (f"built for MLX {getattr(_ext, 'mlx_version', '?')}, this is MLX {mx.__version__}: "
                     "rebuild with python -m edge_rnn.ext")
            _ext = None
        elif getattr(_ext, "api", 1) != API:
            error = "built from older kernels.cpp: rebuild with python -m edge_rnn.ext"
            _ext = None

available: bool = _ext is not None


def usable(x: mx.array) -> bool:
    """Whether the kernels can compute on ``x``: extension built, float32, on the CPU."""
    return available and x.dtype == mx.float32 and mx.default_device() == mx.cpu

"""The fast-BLAS loader (edge_rnn.blas), each case in a fresh interpreter: what gets loaded before
MLX decides which BLAS its matmuls use, so it can only be observed in a new process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Prints, as one JSON line: edge_rnn.blas.loaded, whether a system OpenBLAS is mapped in the process,
# and a float32 matmul computed by MLX. argv[1] == "none-found" first hides every candidate.
PROBE = r"""
import ctypes.util, importlib.util, json, sys
if sys.argv[1] in ("none-found", "dangling"):
    spec = importlib.util.spec_from_file_location("edge_rnn_blas_probe", sys.argv[2])
    blas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blas)  # the loader alone: edge_rnn/__init__ would load the real one
    blas._CANDIDATES = ["/nonexistent/libblas.so.3"]
    if sys.argv[1] == "none-found":
        blas._find_mkl = lambda: None
        ctypes.util.find_library = lambda name: None
    else:  # the linker cache names a library whose file is gone (OpenBLAS hidden or half removed)
        ctypes.util.find_library = lambda name: "libopenblas-gone.so.0"
    blas.load()
    loaded = blas.loaded
else:
    import edge_rnn
    loaded = edge_rnn._blas.loaded
import numpy as np
import mlx.core as mx
rng = np.random.default_rng(0)
a, b = rng.normal(size=(64, 300)).astype(np.float32), rng.normal(size=(300, 50)).astype(np.float32)
c = np.array(mx.array(a) @ mx.array(b))
# numpy's own OpenBLAS (scipy_openblas, symbols renamed) is mapped in every process: not that one
mapped = [line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()]
openblas = any("scipy_openblas" not in path for path in mapped)
mkl = any("libmkl" in line for line in open("/proc/self/maps"))
print(json.dumps({"loaded": loaded, "openblas_mapped": openblas, "mkl_mapped": mkl, "matmul": c.tolist()}))
"""


def probe(env_value: str | None, mode: str = "import") -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_RNN_BLAS"}
    if env_value is not None:
        env["EDGE_RNN_BLAS"] = env_value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(ROOT / "edge_rnn" / "blas.py")],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def openblas_installed() -> bool:
    sys.path.insert(0, str(ROOT))
    from edge_rnn import blas

    return blas._find() is not None


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the loader only acts on Linux")


def test_off_keeps_the_reference_blas():
    result, err = probe("off")
    assert result["loaded"] is None
    assert not result["openblas_mapped"]
    assert "edge-rnn" not in err  # choosing the slow BLAS is not worth a warning


def test_auto_loads_openblas_and_agrees_with_reference():
    assert openblas_installed(), "no OpenBLAS here: apt-get install libopenblas0-pthread (.ci/run does)"
    fast, err = probe(None)
    assert fast["loaded"] and "openblas" in fast["loaded"].lower()
    assert fast["openblas_mapped"]
    assert err == ""
    assert probe("auto")[0]["loaded"] == fast["loaded"]
    reference, _ = probe("off")
    np.testing.assert_allclose(np.array(fast["matmul"]), np.array(reference["matmul"]), rtol=1e-4, atol=1e-4)


def test_bad_path_warns_and_falls_back():
    result, err = probe("/nonexistent/libcblas.so")
    assert result["loaded"] is None
    assert not result["openblas_mapped"]
    lines = [line for line in err.splitlines() if line.startswith("edge-rnn:")]
    assert len(lines) == 1 and "could not load BLAS '/nonexistent/libcblas.so'" in lines[0]


def test_none_found_prints_one_line_with_the_fix():
    result, err = probe(None, mode="none-found")
    assert result["loaded"] is None
    assert not result["openblas_mapped"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "slow reference BLAS" in lines[0] and "apt-get install libopenblas0-pthread" in lines[0]
    reference, _ = probe("off")
    np.testing.assert_allclose(np.array(result["matmul"]), np.array(reference["matmul"]), rtol=1e-5, atol=1e-5)


def test_mkl_from_pypi_is_the_fallback_and_agrees_with_reference():
    """A fresh ``pip install`` (no apt) gets MKL from its wheel: ``mkl`` picks only that source."""
    fast, err = probe("mkl")
    assert fast["loaded"] and "libmkl_rt" in fast["loaded"]
    assert fast["mkl_mapped"] and not fast["openblas_mapped"]
    assert err == ""
    reference, _ = probe("off")
    assert not reference["mkl_mapped"]
    np.testing.assert_allclose(np.array(fast["matmul"]), np.array(reference["matmul"]), rtol=1e-4, atol=1e-4)


def test_auto_falls_through_an_unloadable_openblas_to_mkl():
    result, err = probe(None, mode="dangling")
    assert result["loaded"] and "libmkl_rt" in result["loaded"]
    assert result["mkl_mapped"] and err == ""

"""Build the optional kernels in place: ``python -m edge_rnn.ext [--clean]``."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    for old in HERE.glob("_ext*.so"):
        old.unlink()
    if "--clean" in argv:
        return 0
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            print(f"edge_rnn.ext: {tool} not found; install it (Debian: apt-get install cmake g++)")
            return 1
    with tempfile.TemporaryDirectory(prefix="edge-rnn-ext-") as build:
        for cmd in (["cmake", "-S", str(HERE), "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DPython_EXECUTABLE={sys.executable}"],
                    ["cmake", "--build", build, "-j2"]):
            if subprocess.call(cmd) != 0:
                print("edge_rnn.ext: build failed (training still works, with MLX's own ops)")
                return 1
    # import in a fresh interpreter: a module built against another MLX/nanobind fails here
    check = "import edge_rnn.ext as e, sys; print(e.error or 'edge_rnn.ext: built, simd=' + e._ext.simd); sys.exit(not e.available)"
    return subprocess.call([sys.executable, "-c", check], cwd=HERE.parent.parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ORT format (``.ort``) that ONNX Runtime Mobile loads, and the operator list of a reduced build.

``write_ort_format(bundle_dir)`` runs onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``, optimization style ``Fixed``) over the bundle's
ONNX graphs: ``model.ort`` and ``prefill.ort`` beside ``model.onnx``/``prefill.onnx``, and
``required_operators.config``, the operators (and opsets) both graphs use, which a reduced
ONNX Runtime build takes (``build.sh --include_ops_by_config required_operators.config``).

An ORT-format file holds its weights inside (the format has no external data), so each ``.ort``
carries its own copy: an ORT Mobile app that must keep its download small ships ``model.ort``
alone and rebuilds states by stepping instead of prefilling.

Each ``.ort`` is then checked in ONNX Runtime against its ``.onnx``: the same characters streamed
through both from a zero state (the prefill graph: the same text in one call), every output
compared; the largest difference goes into the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_rnn.io import EdgeRNNError, quiet_logs

CONFIG_FILE = "required_operators.config"
CHECK_TEXT = " the quick brown fox jumps over the lazy dog and then some more words"
CHECK_TOLERANCE = 1e-5


def write_ort_format(bundle_dir: Path, graphs: list[str], n_outputs: int) -> dict:
    """Convert ``graphs`` (ONNX files in ``bundle_dir``) to ``.ort`` beside them, write the
    operator config, check each ``.ort`` against its ``.onnx`` (``n_outputs``: the model's, for
    a prefix-range head's full range); return the manifest fragment."""
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    bundle_dir = Path(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="edge-rnn-ort-") as work:
        work = Path(work)
        src, out = work / "onnx", work / "ort"
        src.mkdir()
        for name in graphs:  # only the graphs (the converter takes every .onnx under a folder)
            (src / name).symlink_to((bundle_dir / name).resolve())
        _link_external_data(bundle_dir, src)
        with contextlib.redirect_stdout(io.StringIO()) as log, quiet_logs(logging.INFO):
            try:
                convert_onnx_models_to_ort(src, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
            except Exception as err:  # the converter raises bare RuntimeErrors
                raise EdgeRNNError(f"ORT format conversion failed: {err}") from None
        files = {name: Path(name).with_suffix(".ort").name for name in graphs}
        for ort_name in [*files.values(), CONFIG_FILE]:
            if not (out / ort_name).is_file():
                raise EdgeRNNError(f"ORT format conversion wrote no {ort_name}: {log.getvalue()[-300:]}")
            shutil.move(out / ort_name, bundle_dir / ort_name)
    config = bundle_dir / CONFIG_FILE  # its header names the converter's temporary paths
    config.write_text(config.read_text().replace(str(out) + "/", ""))
    check = {name: check_ort(bundle_dir / name, bundle_dir / ort, n_outputs) for name, ort in files.items()}
    return {"files": files, "required_operators": CONFIG_FILE,
            "tool": f"onnxruntime {onnxruntime.__version__} tools.convert_onnx_models_to_ort "
                    "(optimization style Fixed, level all)",
            "weights": "each .ort holds its own copy of the weights (the ORT format has no external data)",
            "check": check}


def _link_external_data(bundle_dir: Path, src: Path) -> None:
    """The graphs name their weights file by a relative path: link it beside them too."""
    for path in bundle_dir.glob("*.bin"):
        (src / path.name).symlink_to(path.resolve())


def check_ort(onnx_path: Path, ort_path: Path, n_outputs: int) -> dict:
    """Stream ``CHECK_TEXT`` through the ``.onnx`` and the ``.ort`` graph alike and compare every
    output; raise if they differ by more than ``CHECK_TOLERANCE``."""
    import onnxruntime as ort

    from edge_rnn.runtime import SYMBOL_ID

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (onnx_path, ort_path)]
    inputs = {i.name: i for i in sessions[0].get_inputs()}
    ids = np.array([SYMBOL_ID[ch] for ch in CHECK_TEXT], np.int32)
    states = [n for n in inputs if n not in ("char", "chars", "range")]
    units = {n: inputs[n].shape[1] for n in states}
    feeds = []
    if "chars" in inputs:  # prefill: the whole text in one call
        feeds.append({"chars": ids[None]})
    else:
        feeds += [{"char": ids[t : t + 1]} for t in range(len(ids))]
    n_out = n_outputs if "range" in inputs else None
    worst, state = 0.0, [{n: np.zeros((1, units[n]), np.float32) for n in states} for _ in sessions]
    for feed in feeds:
        outs = []
        for k, session in enumerate(sessions):
            full = {**feed, **state[k], **({"range": np.array([2, n_out], np.int32)} if n_out else {})}
            names = [o.name for o in session.get_outputs()]
            out = dict(zip(names, session.run(names, full)))
            state[k] = {n: out[f"{n}_next"] for n in states}
            outs.append(out)
        for name, value in outs[0].items():
            if value.dtype.kind == "f":
                worst = max(worst, float(np.abs(value - outs[1][name]).max(initial=0.0)))
            elif not np.array_equal(value, outs[1][name]):
                raise EdgeRNNError(f"{ort_path.name} differs from {onnx_path.name} in {name}")
    if worst > CHECK_TOLERANCE:
        raise EdgeRNNError(f"{ort_path.name} differs from {onnx_path.name} by {worst:.3g}")
    return {"chars": len(ids), "calls": len(feeds), "max_abs_diff": worst}


__all__ = ["write_ort_format", "check_ort", "CONFIG_FILE"]

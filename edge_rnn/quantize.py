"""Post-training weight quantization of bundles and run directories, and a built-in check of its cost.

``quantize(path, to)`` compresses the weights of an ONNX bundle, a Core ML bundle or an MLX run
directory to ``int8``, ``int4`` or ``fp16`` with each library's own tools where they fit, writes the
result beside it (atomically), and records in the manifest (``quantization``; ``quantization.json``
for a run) what was done and what it cost: model bytes and their ratio to the source, and the
accuracy check of ``edge_rnn.quantize_check`` (held-out text streamed through the source and the
quantized model on the same runtime).

Each target's quantization is one module beside its exporter, all with the same three names
(``quantize(source, to, tmp) -> record``, ``chunks`` the check's runner, ``RUNTIME``):

- ONNX: ``edge_rnn.export.onnx_quantize`` (ONNX Runtime's quantizers; the prefix-range head's rows
  stored int8/int4/fp16 and sliced before they are dequantised);
- Core ML: ``edge_rnn.export.coreml_quantize`` (``coremltools.optimize.coreml``);
- MLX run directories: ``edge_rnn.mlx_quantize`` (``mlx.nn.quantize`` of the head).

A target module is imported only when its kind is quantized (coremltools is slow to import).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Callable

from edge_rnn.export.bundle import MANIFEST, VOCAB, read_manifest, write_manifest
from edge_rnn.io import EdgeRNNError, atomic_dir
from edge_rnn.quantize_check import EVAL_CHARS, Source, check

TARGETS = ("int8", "int4", "fp16")


def _onnx() -> ModuleType:
    from edge_rnn.export import onnx_quantize

    return onnx_quantize


def _coreml() -> ModuleType:
    from edge_rnn.export import coreml_quantize

    return coreml_quantize


def _mlx() -> ModuleType:
    from edge_rnn import mlx_quantize

    return mlx_quantize


TARGET_MODULES: dict[str, Callable[[], ModuleType]] = {"onnx": _onnx, "coreml": _coreml, "mlx": _mlx}


def quantize(path: Path, to: str, out: Path | None = None, force: bool = False,
             eval_text: Path | None = None, max_chars: int = EVAL_CHARS) -> tuple[Path, dict]:
    """Quantize the bundle or run directory ``path`` to ``to`` (int8, int4, fp16) into ``out``
    (default ``PATH-TO``), check it against the source, and return ``(out, record)``; the record
    is also stored in the manifest (``quantization``) or in a run's ``quantization.json``."""
    if to not in TARGETS:
        raise EdgeRNNError(f"unknown quantization target {to!r}; choose one of: {', '.join(TARGETS)}")
    source = open_source(Path(path))
    out = Path(out) if out is not None else default_out(source.path, to)
    if out.resolve() == source.path.resolve():
        raise EdgeRNNError(f"--out {out} is the source itself; choose another directory")
    with atomic_dir(out, force=force) as tmp:
        target = TARGET_MODULES[source.kind]()
        record = target.quantize(source, to, tmp)
        record["check"] = check(source, tmp, target.chunks, target.RUNTIME, eval_text, max_chars)
        _finish(source, tmp, record)
    return out, record


def default_out(path: Path, to: str) -> Path:
    """``bundles/x`` -> ``bundles/x-int8`` (absolute, so ``.`` works too)."""
    path = Path(path).resolve()
    return path.with_name(f"{path.name}-{to}")


def open_source(path: Path) -> Source:
    """Classify ``path`` (a bundle has manifest.json, a run config.json); refuse quantized ones."""
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        if "quantization" in manifest:
            raise EdgeRNNError(f"{path} is already quantized ({manifest['quantization'].get('to')}); "
                               "quantize the fp32 bundle it came from")
        if manifest.get("target") not in ("onnx", "coreml"):
            raise EdgeRNNError(f"{path}: unknown bundle target {manifest.get('target')!r}")
        return Source(manifest["target"], path, manifest)
    if (path / "config.json").is_file():
        from edge_rnn.model import QUANTIZATION

        if (path / QUANTIZATION).is_file():
            raise EdgeRNNError(f"{path} is already quantized; quantize the fp32 run it came from")
        return Source("mlx", path, None)
    raise EdgeRNNError(f"{path} is neither a bundle (manifest.json) nor a run directory (config.json)")


def _finish(source: Source, tmp: Path, record: dict) -> None:
    """Sizes, then the manifest (bundles, with fresh sha256s) or quantization.json (runs)."""
    record["size"] = _size(model_bytes(source.path, source.kind), model_bytes(tmp, source.kind))
    if source.kind == "mlx":
        from edge_rnn.model import QUANTIZATION

        (tmp / QUANTIZATION).write_text(json.dumps(record, indent=2))
        return
    manifest = dict(source.manifest)
    manifest.pop("files", None)
    manifest["export"] = {**manifest["export"], **record.pop("export", {})}
    manifest["quantization"] = record
    write_manifest(tmp, manifest)


def model_bytes(path: Path, kind: str) -> dict[str, int]:
    """Bytes of each model file (weights and graph; not vocab.json, manifest.json, logs)."""
    path = Path(path)
    if kind == "mlx":
        from edge_rnn.model import WEIGHTS

        return {WEIGHTS: (path / WEIGHTS).stat().st_size}
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, VOCAB)}


def _size(source: dict[str, int], quantized: dict[str, int]) -> dict:
    total, q_total = sum(source.values()), sum(quantized.values())
    return {"source_bytes": total, "bytes": q_total, "ratio": q_total / total, "files": quantized}

def summary_row(record: dict) -> dict:
    """The numbers a table shows, flat."""
    check_, size = record["check"], record["size"]
    return {"to": record["to"], "dtype": record["dtype"], "bytes": size["bytes"],
            "source_bytes": size["source_bytes"], "ratio": size["ratio"],
            "top1_source": check_["source"]["top1"], "top1": check_["quantized"]["top1"],
            "top3_source": check_["source"]["top3"], "top3": check_["quantized"]["top3"],
            "agreement": check_["top1_agreement"], "max_abs_dprob": check_["max_abs_dprob"]}




__all__ = ["TARGETS", "quantize", "default_out", "open_source", "model_bytes", "summary_row"]

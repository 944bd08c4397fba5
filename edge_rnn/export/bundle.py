"""The bundle: everything an app needs to run a model, and nothing from edge-rnn itself.

    model.onnx / prefill.onnx   (or model.mlpackage)  the step function (and sequence prefill)
    weights.bin                 ONNX: the weights of both graphs, stored once (external data)
    model.ort / prefill.ort     ONNX, with --ort: the ORT format for ONNX Runtime Mobile, and
    required_operators.config   the operators a reduced ONNX Runtime build must include
    vocab.json                  input symbols and output words, in id order
    manifest.json               architecture, input/output and state layout, text normalisation,
                                top_k, sha256 and size of every file, the source run's metrics

The step function's contract is shared by every exporter. Inputs: ``char`` int32 ``[batch]``, then
every recurrent state ``float32 [batch, H]`` in ``state_names`` order. Outputs: ``top_ids`` int32
``[batch, k]``, ``top_probs`` float32 ``[batch, k]`` (softmax over *all* outputs, sorted
descending, <pad> and <unk> included: an app filters them), optionally ``log_probs`` float32
``[batch, V]``, then each next state as ``<state name>_next`` in the same order.

A bundle exported with the prefix-range head (``prefix_head=True``, ONNX or Core ML) orders its
output ids alphabetically (``prefix_order``; vocab.json is written in that order) and takes one
more input, ``range`` int32 ``[2]``: see ``edge_rnn.export.onnx``, ``edge_rnn.export.coreml`` (whose
outputs keep ``top_k`` entries, padding marked) and the manifest's ``export.prefix_head``.

The names this contract shares with the exporters live in ``edge_rnn.export.contract`` (imported
by both sides; re-exported here): this module calls the exporters, they never import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edge_rnn import __version__
from edge_rnn.export.contract import (  # noqa: F401  (re-exported: the bundle's public names)
    FORMAT_VERSION, FORMATS, MANIFEST, METRICS, PRECISIONS, RANGE_INPUT, TEXT_RULES, VOCAB,
    prefix_order, state_layout, state_names)
from edge_rnn.io import EdgeRNNError, atomic_dir, sha256_file
from edge_rnn.prefix import run_objective
from edge_rnn.vocab import PAD, UNK, Vocab

if TYPE_CHECKING:  # model.py imports MLX: a runtime that only reads bundles must not need it
    from edge_rnn.model import ModelConfig

def export_bundle(run_dir: Path, out_dir: Path, fmt: str = "onnx", top_k: int = 3,
                  coreml_state: str = "io", precision: str = "fp32", force: bool = False,
                  with_log_probs: bool = False, prefix_head: bool = False, ort_format: bool = False,
                  boundary_words: int = 0) -> Path:
    """Export the run in ``run_dir`` as a bundle in ``out_dir``, atomically.

    The bundle is built in a temporary sibling folder and renamed into place only when complete,
    so a failure at any point leaves no half bundle (and an existing one untouched).
    ``prefix_head``: the prefix-range head, vocab.json in its alphabetical order.
    ``ort_format`` (ONNX only): also ``.ort`` models for ONNX Runtime Mobile and the operator list
    of a reduced build (``edge_rnn.export.ort_format``).
    ``boundary_words`` (ONNX, with ``prefix_head``): word boundaries rank only that many most
    frequent words (``edge_rnn.export.onnx.boundary_graph``).
    """
    from edge_rnn.model import QUANTIZATION, load

    if fmt not in FORMATS:
        raise EdgeRNNError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise EdgeRNNError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if ort_format and fmt != "onnx":
        raise EdgeRNNError("the ORT format is for ONNX bundles only (--format onnx)")
    if boundary_words and fmt != "onnx":
        raise EdgeRNNError("the word-boundary list is built for ONNX bundles only (--format onnx)")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (run_dir / QUANTIZATION).is_file():
        raise EdgeRNNError(f"{run_dir} holds MLX-quantized weights; export the fp32 run and "
                           "quantize the bundle (edge-rnn quantize BUNDLE)")
    model, vocab = load(run_dir)
    if prefix_head and model.config.task != "autocomplete":  # before an exporter (coremltools) loads
        raise EdgeRNNError("the prefix-range head needs an autocomplete model (its outputs are words)")
    objective = run_objective(run_dir)
    if objective == "prefix" and not (prefix_head or with_log_probs):
        raise EdgeRNNError(f"{run_dir} was trained with the prefix objective: its words rank only among those "
                           "of the typed prefix, so a top-k over all words means nothing; export it with "
                           "--prefix-head (or --log-probs)")
    labels = _output_labels(model.config, vocab, run_dir)
    words = labels.words if prefix_head else None
    with atomic_dir(out_dir, force=force) as tmp:
        fragment = _export_model(model, tmp, fmt, top_k, coreml_state, precision, with_log_probs, words,
                                 ort_format, boundary_words)
        if words is not None:  # vocab.json lists the words in the exported id order
            labels = Vocab([words[k] for k in prefix_order(words)])
        (tmp / VOCAB).write_text(json.dumps(labels.to_json()))
        write_manifest(tmp, _manifest(model.config, fmt, top_k, fragment, run_dir, objective))
    return out_dir


def write_manifest(bundle_dir: Path, manifest: dict) -> dict:
    """Write ``manifest.json`` with the sha256 and size of every file now in ``bundle_dir``.

    For tools that rewrite a bundle's model files (``edge-rnn quantize``): the digests must describe
    the files as they are, or ``read_manifest`` rejects the bundle.
    """
    manifest = {**manifest, "files": _file_digests(Path(bundle_dir))}
    (Path(bundle_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _output_labels(config: ModelConfig, vocab: Vocab | None, run_dir: Path) -> Vocab:
    """The run's vocabulary; a char LM needs none (its outputs are the input symbols)."""
    if vocab is not None:
        return vocab
    if config.task == "charlm":
        return Vocab.from_counts([])
    raise EdgeRNNError(f"{run_dir} has no vocab.json; an autocomplete bundle needs its words")


def _export_model(model, out: Path, fmt: str, top_k: int, coreml_state: str, precision: str,
                  with_log_probs: bool, words: list[str] | None = None, ort_format: bool = False,
                  boundary_words: int = 0) -> dict:
    """Write the model files for one target; imports each exporter only when it is used.
    ``words`` asks for the prefix-range head."""
    if fmt == "onnx":
        from edge_rnn.export.onnx import export_onnx

        return export_onnx(model, out, top_k=top_k, with_log_probs=with_log_probs, precision=precision,
                           prefix_head=words is not None, words=words, ort_format=ort_format,
                           boundary_words=boundary_words)
    from edge_rnn.export.coreml import export_coreml

    return export_coreml(model, out, top_k=top_k, state=coreml_state, precision=precision,
                         with_log_probs=with_log_probs, prefix_head=words is not None, words=words)


def _manifest(config: ModelConfig, fmt: str, top_k: int, fragment: dict, run_dir: Path, objective: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"edge-rnn {__version__}",
        "target": fmt,
        "model": {"cell": config.cell, "layers": config.layers, "units": config.units,
                  "depth": config.depth if config.cell == "nlstm" else None,
                  "embed_dim": config.embed_dim, "task": config.task,
                  "vocab_size": config.vocab_size, "n_outputs": config.n_outputs},
        "outputs_are": "words" if config.task == "autocomplete" else "symbols",
        "special_outputs": {"<pad>": PAD, "<unk>": UNK} if config.task == "autocomplete" else {"<pad>": PAD},
        "special_outputs_note": "top_ids/top_probs rank all outputs, special ones included; "
                                "an app skips them when it shows suggestions",
        "top_k": top_k,
        "inputs": fragment.get("inputs"),
        "outputs": fragment.get("outputs"),
        "state": state_layout(config),
        "text": TEXT_RULES,
        "export": {k: v for k, v in fragment.items() if k not in ("inputs", "outputs")},
        "source": {"run": Path(run_dir).name, "run_dir": str(Path(run_dir).resolve()),
                   "objective": objective, "metrics": read_run_metrics(run_dir)},
        **({"objective_note": "trained with the prefix objective (edge_rnn.prefix): scores compare only among "
                              "the words of one typed prefix; rank within its range, as every runtime here "
                              "does"} if objective == "prefix" else {}),
    }


def _file_digests(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``root`` (an .mlpackage is a folder: each file in it)."""
    return {path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != MANIFEST}


def read_run_metrics(run_dir: Path) -> dict:
    """The final evaluation record and the last record of ``metrics.jsonl``; {} if there is none.

    Tolerant by design: a bundle must not fail because a training log is absent or was cut short.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    if not records:
        return {}
    evals = [r for r in records if _is_eval(r)]
    return {"final_eval": evals[-1] if evals else None, "last": records[-1]}


def _is_eval(record: dict) -> bool:
    tags = " ".join(str(record.get(k, "")) for k in ("event", "kind", "type", "split", "phase"))
    return any(word in tags for word in ("eval", "valid", "test"))


def read_manifest(bundle_dir: Path) -> dict:
    """Load a bundle's manifest and verify every file it lists (size and sha256)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise EdgeRNNError(f"{bundle_dir} is not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeRNNError(f"{path} is not valid JSON: {err}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EdgeRNNError(f"{path}: bundle format version {version!r} is not supported "
                           f"(this edge-rnn reads up to {FORMAT_VERSION})")
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise EdgeRNNError(f"{path}: 'files' must map file names to their size and sha256")
    for name, entry in files.items():
        _verify_file(bundle_dir, name, entry)
    return manifest


def _verify_file(bundle_dir: Path, name: str, entry: dict) -> None:
    parts = Path(name).parts
    if not isinstance(entry, dict) or not parts or Path(name).is_absolute() or ".." in parts:
        raise EdgeRNNError(f"bundle {bundle_dir}: manifest entry {name!r} is not a file inside the bundle")
    path = bundle_dir / name
    if not path.is_file():
        raise EdgeRNNError(f"bundle {bundle_dir}: {name} is missing")
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise EdgeRNNError(f"bundle {bundle_dir}: {name} is damaged or was changed (sha256 mismatch)")

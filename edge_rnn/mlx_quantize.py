"""Quantization of MLX run directories: the MLX side of ``edge-rnn quantize``.

(run directories). ``mlx.nn.quantize`` of the output head and its bottleneck (the ``nn.Linear``s; the
embedding and the cells hold raw arrays MLX does not quantize), affine, groups of 64 (32 when an
input width needs it), 8 or 4 bits. The run directory gets ``quantization.json``, which
``edge_rnn.model.load`` reads to rebuild the quantized modules before loading the weights.

The accuracy check (``edge_rnn.quantize_check``) runs both run directories' models in MLX over
whole observations through ``chunks``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edge_rnn.data import Dataset
from edge_rnn.io import EdgeRNNError
from edge_rnn.quantize_check import Chunks, Source
from edge_rnn.vocab import PAD

MLX_GROUPS = (64, 32)  # nn.quantize group sizes, preferred first
MLX_BATCH = 16  # observations per MLX forward (B x T x V logits in memory)
RUNTIME = "MLX, whole observations"


def quantize(source: Source, to: str, tmp: Path) -> dict:
    """``nn.quantize`` the run's head into a new run directory that ``model.load`` restores."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from edge_rnn.model import QUANTIZATION, WEIGHTS, load

    if to == "fp16":
        raise EdgeRNNError("fp16 is for bundles; quantize a run directory to int8 or int4")
    model, _ = load(source.path)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    modules = list(linears)  # the head, and its bottleneck when the model has one
    bits = 8 if to == "int8" else 4
    group = _mlx_group_size([m.weight.shape[1] for m in linears.values()])
    nn.quantize(model, group_size=group, bits=bits, class_predicate=lambda name, _: name in modules)
    for item in source.path.iterdir():  # config, vocab, train settings, metrics; not checkpoints
        if item.is_file() and item.name != WEIGHTS:
            shutil.copy2(item, tmp / item.name)
    mx.save_safetensors(str(tmp / WEIGHTS), dict(tree_flatten(model.parameters())))
    record = {"to": to, "source_precision": "fp32", "tool": f"mlx {mx.__version__}",
              "method": "mlx.nn.quantize (affine)",
              "dtype": to, "bits": bits, "group_size": group, "granularity": f"groups of {group} inputs",
              "modules": modules, "kept_fp32": ["embedding", "layers (recurrent cells)"]}
    (tmp / QUANTIZATION).write_text(json.dumps(record, indent=2))  # load() needs it for the check
    return record


def _mlx_group_size(widths: list[int]) -> int:
    """The largest group size dividing every quantized layer's input width (the head's is
    ``head_dim`` when the model has a bottleneck: 96 on the edge presets, so groups of 32)."""
    for group in MLX_GROUPS:
        if all(width % group == 0 for width in widths):
            return group
    raise EdgeRNNError(f"input widths {sorted(set(widths))} are not all multiples of "
                       f"{' or '.join(map(str, MLX_GROUPS))}: MLX cannot quantize the head in groups")



# ---- the check's runner -------------------------------------------------------------------------

def chunks(run_dir: Path, data: Dataset, manifest: None = None) -> Chunks:
    """Whole observations through the MLX model (a padded batch computes the same per position)."""
    import mlx.core as mx

    from edge_rnn.model import load

    model, _ = load(run_dir)
    for ids, targets in data.batches(MLX_BATCH, shuffle=False):
        logits, _ = model(mx.array(ids))
        probs = mx.softmax(logits.astype(mx.float32), axis=-1)
        live = targets != PAD
        yield np.array(probs)[live], targets[live]


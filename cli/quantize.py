"""``edge-rnn quantize``: compress a bundle (ONNX, Core ML) or a run directory (MLX) and show what
it cost. The work and the check live in ``edge_rnn.quantize``; this module parses and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def quantize(
    source: Path = typer.Argument(..., help="A bundle written by 'edge-rnn export' (ONNX or Core ML), or a run directory (MLX)."),
    to: str = typer.Option(..., "--to", help="int8, int4 or fp16 (fp16: bundles only)."),
    out: Optional[Path] = typer.Option(None, help="Where to write the quantized copy (default: SOURCE-TO beside it)."),
    force: bool = typer.Option(False, help="Replace an existing non-empty --out."),
    eval_text: Optional[Path] = typer.Option(None, help="UTF-8 text to check the quantized model on (default: the source run's test split if the bundle names it and it is at hand, else built-in demo text)."),
    eval_chars: int = typer.Option(20_000, help="Characters of held-out text the check streams through both models."),
):
    """Quantize weights for the bundle's own runtime and record bytes, ratio and accuracy against the source."""
    from edge_rnn.io import EdgeRNNError
    from edge_rnn.quantize import quantize as run_quantize

    if eval_chars < 1:
        raise EdgeRNNError(f"--eval-chars must be >= 1, got {eval_chars}")
    path, record = run_quantize(source, to, out=out, force=force, eval_text=eval_text, max_chars=eval_chars)
    _show(source, path, record)


def _show(source: Path, path: Path, record: dict) -> None:
    """One row per measure, source beside quantized: fits an 80-column terminal."""
    from rich.table import Table

    from cli.show import console

    check, size = record["check"], record["size"]
    table = Table(title=f"{source} -> {path}",
                  caption=f"{check['positions']:,} positions of {check['text']}; {check['runtime']}. "
                          "top-k: argmax over all outputs, <unk> = miss")
    for name in ("", "source", "quantized"):
        table.add_column(name, justify="left" if not name else "right")
    rows = [("format", _format(record), _format(record)),
            ("precision", record.get("source_precision", "fp32"), f"{record['to']} ({record['dtype']})"),
            ("bytes", _kib(size["source_bytes"]), _kib(size["bytes"])),
            ("ratio", "", f"{size['ratio']:.1%}"),
            ("top-1", f"{check['source']['top1']:.2%}", f"{check['quantized']['top1']:.2%}"),
            ("top-3", f"{check['source']['top3']:.2%}", f"{check['quantized']['top3']:.2%}"),
            ("top-1 agreement", "", f"{check['top1_agreement']:.2%}"),
            ("top-3 agreement", "", f"{check['top3_agreement']:.2%}"),
            ("max |Δp|", "", f"{check['max_abs_dprob']:.4f}")]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"[dim]{record['method']}; {record['granularity']}[/]")
    if "minimum_deployment_target" in record:
        console.print(f"minimum deployment target now {record['minimum_deployment_target']}")


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n >= 100 * 1024 else f"{n / 1024:,.1f} KiB"


def _format(record: dict) -> str:
    tool = record["tool"].split()[0]
    return {"onnxruntime": "onnx", "coremltools": "coreml", "mlx": "mlx (run dir)"}.get(tool, tool)

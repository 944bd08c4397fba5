"""``edge-rnn bench``: per-keystroke latency, prefill speed, size and memory of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def bench(
    source: Path = typer.Argument(..., help="A bundle directory or a run directory."),
    backend: Optional[str] = typer.Option(None, help="mlx, onnx or coreml (default: a run dir runs in MLX, a bundle on its own target; a run dir on onnx is exported to a temporary bundle)."),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads (a keyboard has one core)."),
    steps: int = typer.Option(1000, help="Timed keystrokes."),
    warmup: int = typer.Option(100, help="Keystrokes stepped before timing starts."),
    text: Optional[Path] = typer.Option(None, help="Text file to type (default: WikiText-2 from ../shared/corpus if present, else the demo corpus)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
):
    """Type real text into the model one character at a time, as a keyboard does, and report
    per-keystroke latency, prefill throughput, size on disk, peak memory and the bandwidth bound."""
    from edge_rnn.bench import run_bench

    result = run_bench(source, backend=backend, threads=threads, steps=steps, warmup=warmup, text_path=text)
    if json_out:
        print(result.to_json())
        return
    from cli.show import console

    console.print(bench_table(result))


def bench_table(r) -> "Table":  # noqa: F821 (rich is imported lazily)
    """One rich table: latency with its bound beside p50, then throughput, sizes and memory."""
    from rich.table import Table

    m = r.model
    head = "prefix-range head" if r.prefix_head else "full head"
    threads = f", {r.threads} thread(s)" if r.threads else ""
    table = Table(title=f"{m['cell']} {m['layers']}x{m['units']}, {m['n_outputs']:,} outputs, {head} on "
                        f"{r.backend}{threads}",
                  caption=f"{r.steps} keystrokes of {r.text} after {r.warmup} warm-up; wall clock. "
                          f"bound = weight bytes a step reads / measured bandwidth "
                          f"({r.bandwidth_bytes_per_s / 1e9:.1f} GB/s, DRAM; cache-resident weights can beat it)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("note")
    lat = r.latency_ms
    table.add_row("p50", f"{lat['p50']:.3f} ms",
                  f"bound {r.bound_ms['p50']:.3f} ms ({r.step_read_bytes['p50'] / 2**20:.2f} MiB read), "
                  f"p50 / bound = {r.p50_over_bound:.2f}x")
    for key in ("p90", "p99", "max"):
        table.add_row(key, f"{lat[key]:.3f} ms", "")
    table.add_row("mean", f"{lat['mean']:.3f} ms", f"bound {r.bound_ms['mean']:.3f} ms")
    prefill = "-" if r.prefill_chars_per_s is None else f"{r.prefill_chars_per_s:,.0f} chars/s"
    table.add_row("prefill", prefill, "200 characters per call")
    table.add_row("model on disk", f"{r.model_bytes / 2**20:.2f} MiB", f"all files {r.bundle_bytes / 2**20:.2f} MiB")
    table.add_row("peak RSS", f"{r.peak_rss_bytes / 2**20:.1f} MiB",
                  f"+{r.rss_delta_bytes / 2**20:.1f} MiB over the process before loading the model")
    return table

"""``edge-rnn bench``: per-keystroke latency, prefill speed, size and memory of a model."""

from __future__ import annotations

import typer


def bench(
    source: str = typer.Argument(..., help="A bundle directory or a run directory."),
):
    """Measure per-keystroke latency the way a keyboard uses the model (not yet implemented)."""
    raise typer.Exit(2)

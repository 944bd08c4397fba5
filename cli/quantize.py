"""``edge-rnn quantize``: compress an exported bundle (int8 / int4 / fp16) for its target."""

from __future__ import annotations

import typer


def quantize(
    bundle: str = typer.Argument(..., help="A bundle directory written by 'edge-rnn export'."),
):
    """Quantize a bundle for its target and record what it cost (not yet implemented)."""
    raise typer.Exit(2)

"""``edge-rnn connectivity``, ``inspect`` and ``plot``: see what a trained model uses (edge_rnn.visualize)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def connectivity(
    run_dir: Path = typer.Argument(..., help="A run directory written by 'edge-rnn train'."),
    text: str = typer.Argument(..., help="Text to feed the model (normalised the text8 way; a leading space is added)."),
    target_pos: Optional[int] = typer.Option(None, help="Output position to explain (0 = the leading space; default: every position, the terminal shows the last)."),
    out: Optional[Path] = typer.Option(None, help="Also write FILE.html (hover a character, self-contained) or FILE.png (a strip with --target-pos, else the whole matrix)."),
):
    """The Distill article's connectivity: how much the output at a position depends on each earlier
    character (squared L2 norm of the gradient of the target word's logit w.r.t. the one-hot input)."""
    from cli.show import console
    from edge_rnn.visualize import run_connectivity

    r = run_connectivity(run_dir, text, target_pos, out)
    pos = len(r.text) - 1 if target_pos is None else target_pos
    console.print(connectivity_strip(r.text, r.C[pos], pos))
    console.print(f"output at position {pos} ({r.text[pos]!r}), target {r.target_names[pos]!r}; "
                  f"colour = connectivity / its maximum ({r.C[pos].max():.3e})")
    if out is not None:
        console.print(f"written to [bold]{out}[/]")


def connectivity_strip(text: str, row, pos: int) -> "Text":  # noqa: F821 (rich is imported lazily)
    """The text with each character's background coloured by its connectivity (white to orange)."""
    from rich.text import Text

    peak = float(row.max()) or 1.0
    strip = Text()
    for k, ch in enumerate(text):
        v = float(row[k]) / peak if k <= pos else 0.0
        style = f"black on rgb({255 - int(25 * v)},{255 - int(170 * v)},{255 - int(242 * v)})"
        strip.append(ch, style=style + (" bold underline" if k == pos else ""))
    return strip


def inspect(
    run_dir: Path = typer.Argument(..., help="A run directory written by 'edge-rnn train'."),
    text: str = typer.Argument(..., help="Text to feed the model."),
    out: Path = typer.Option(Path("states.png"), help="PNG to write."),
    units: int = typer.Option(32, help="Units per heat map (the most varying over the text)."),
):
    """Heat maps of the cell states over a text: each layer's memory, or for a Nested LSTM the
    outer memory against each inner memory (the Nested LSTM paper's figures 3 and 4)."""
    from cli.show import console
    from edge_rnn.visualize import run_inspect

    panels = run_inspect(run_dir, text, out, units)
    for name, values in panels:
        console.print(f"{name}: {values.shape[1]} units, values in [{values.min():.2f}, {values.max():.2f}]")
    console.print(f"written to [bold]{out}[/]")


def plot(
    run_dirs: List[Path] = typer.Argument(..., help="One or more run directories written by 'edge-rnn train'."),
    out: Path = typer.Option(Path("runs.png"), help="PNG to write."),
    split: str = typer.Option("test", help="Split for the accuracy-by-letters-typed panel."),
    max_batches: Optional[int] = typer.Option(None, help="Score only this many batches of 64 (default: the whole split)."),
):
    """Training and validation curves of several runs in one figure, and accuracy as a function of
    how many letters of the word have been typed (padding never counts), one line per run."""
    from rich.table import Table

    from cli.show import console
    from edge_rnn.visualize import run_plot

    curves = run_plot(run_dirs, out, split, max_batches)
    letters = curves[0].context["letters"]
    table = Table(title=f"top-1 accuracy by letters typed ({split} split; <unk> = miss, padding not scored)")
    table.add_column("run")
    for n in letters:
        table.add_column(f"{n}{'+' if n == letters[-1] else ''}", justify="right")
    for c in curves:
        table.add_row(c.label, *[f"{v:.0%}" for v in c.context["top1"]])
    console.print(table)
    console.print(f"written to [bold]{out}[/]")

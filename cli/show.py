"""Rich rendering for the CLI: progress bars and tables. No library logic lives here."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


@contextmanager
def training_progress(total: int) -> Iterator:
    """A bar with loss, accuracy and characters/second; yields the ``progress(step, stats)`` hook.

    Until the first step a spinner says the data is being prepared (text8 takes ~20 s), so an
    error while loading the corpus is not printed under an empty bar. When stdout is not a
    terminal (nohup, CI, a cluster job) there is no bar: ``plain_lines`` prints the library's
    progress lines instead, and the hook does nothing.
    """
    if not console.is_terminal:
        console.print("preparing data and model...", highlight=False)
        yield lambda step, stats: None
        return
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[cps]:,.0f} chars/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, console=console)
    status = console.status("preparing data and model...")
    status.start()
    task = None

    def hook(step: int, stats: dict) -> None:
        nonlocal task
        if task is None:
            status.stop()
            bar.start()
            task = bar.add_task("train", total=total, completed=step - 1, loss=0.0, acc=0.0, cps=0.0)
        bar.update(task, completed=step, loss=stats["loss"], acc=stats["acc"], cps=stats["chars_per_s"])
        if "valid" in stats:
            v = stats["valid"]
            extra = f"bpc {v['bpc']:.3f}" if "bpc" in v else f"top-3 {v['top3']:.1%}"
            bar.console.print(f"  step {step:>6}  valid ce {v['ce']:.3f}  top-1 {v['top1']:.1%}  {extra}")

    try:
        yield hook
    finally:
        status.stop()
        bar.stop()


def plain_lines() -> Callable[[str], None] | None:
    """Where the training loop's plain progress lines go: stdout when it is not a terminal (the
    bar shows the same there otherwise)."""
    if console.is_terminal:
        return None
    return lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """One row per split/model, with the metric conventions in the caption."""
    over = ("the typed prefix's words (prefix objective)" if any(r.get("objective") == "prefix" for r in rows.values())
            else "all classes")
    table = Table(title=title, caption=f"ce: nats over loss tokens (no pad/unk); ce and top-k: {over}, unk = miss")
    keys = [k for k in ("ce", "bpc", "top1", "top3", "top1_known", "unk_rate", "tokens") if any(k in r for r in rows.values())]
    table.add_column("")
    for k in keys:
        table.add_column(k, justify="right")
    for name, r in rows.items():
        table.add_row(name, *[_fmt(k, r.get(k)) for k in keys])
    return table


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("top1", "top3", "top1_known", "unk_rate"):
        return f"{value:.2%}"
    if key == "tokens":
        return f"{value:,}"
    return f"{value:.4f}"


def completions_table(rows: list[tuple[str, list[tuple[str, float]]]]) -> Table:
    table = Table(title="completions", show_lines=False)
    table.add_column("typed")
    table.add_column("suggestions (probability)")
    for typed, words in rows:
        table.add_row(repr(typed), "   ".join(f"[bold]{w}[/] {p:.1%}" for w, p in words) or "-")
    return table


def key_value_table(title: str, items: dict) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in items.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    return table

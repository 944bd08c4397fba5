"""Rendering for ``edge-rnn eval --keyboard``: the keyboard tables and a progress line that also
shows when stdout is not a terminal. No library logic lives here."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.table import Table

from cli.show import console, err_console

KSR_PROTOCOL = ("KSR protocol: 3 suggestion slots; without prediction a word of L letters costs L + 1 "
                "keystrokes (letters and space); the typist taps the word as soon as it is shown, after "
                "j letters (first j, 0..L), costing j + 1 (the tap inserts the word and its space); a word "
                "never shown (OOV words never are) costs L + 1.")


def keyboard_tables(report: dict) -> list[Table]:
    """Summary (top-k, next-word, OOV, KSR) and accuracy by letters typed, one row per keyboard."""
    rows = report["keyboards"]
    any_row = next(iter(rows.values()))
    summary = Table(title=f"keyboard: {report['source']} on {report['text']} "
                          f"({any_row['words']:,} words, {any_row['positions']:,} positions)",
                    caption="top-k over every (word, letters typed) position with the prefix filter; "
                            "OOV words are misses. " + KSR_PROTOCOL)
    summary.add_column("keyboard", no_wrap=True)
    for col in ("top-1", "top-3", "next-word top-3", "KSR", "OOV"):
        summary.add_column(col, justify="right")
    for name, r in rows.items():
        summary.add_row(name, f"{r['top1']:.2%}", f"{r['top3']:.2%}", f"{r['next_word_top3']:.2%}",
                        f"{r['ksr']:.2%}", f"{r['oov_rate']:.2%}")
    by = Table(title="accuracy (%) by letters typed", caption="positions: " + ", ".join(
        f"{k} letters {v['positions']:,}" for k, v in any_row["by_letters"].items()))
    by.add_column("keyboard", no_wrap=True)
    by.add_column("")
    for bucket in any_row["by_letters"]:
        by.add_column(bucket, justify="right", no_wrap=True)
    for name, r in rows.items():
        for key, label in (("top1", "top-1"), ("top3", "top-3")):
            by.add_row(name if key == "top1" else "", label,
                       *[f"{100 * v[key]:.1f}" for v in r["by_letters"].values()], end_section=key == "top3")
    return [summary, by]


@contextmanager
def keyboard_progress() -> Iterator:
    """A ``progress(keyboard, done, total)`` hook: a bar on a terminal, else a line per update."""
    if not err_console.is_terminal:
        def line(name: str, done: int, total: int) -> None:
            err_console.print(f"{name}: {done:,}/{total:,} words", highlight=False)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("words"),
                   TimeElapsedColumn(), console=err_console, transient=True)
    tasks: dict[str, int] = {}

    def hook(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done)

    with bar:
        yield hook


def print_keyboard(report: dict) -> None:
    for table in keyboard_tables(report):
        console.print(table)

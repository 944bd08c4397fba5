"""Run dirs -> figures: what ``edge-rnn connectivity``, ``inspect`` and ``plot`` do, for any cell and depth.

Each function loads what it needs from run directories written by ``edge-rnn train``, computes with
``edge_rnn.connectivity`` and draws with ``edge_rnn.figures``; the CLI only parses and prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rnn import connectivity as conn
from edge_rnn import figures
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import METRICS, RNNModel, load
from edge_rnn.vocab import SYMBOLS

FIGURE_SUFFIXES = (".html", ".png")


@dataclass
class ConnectivityResult:
    text: str  # what the model saw: normalised, with the leading space
    C: np.ndarray  # (T, T) connectivity of every output position
    target_names: list[str]  # the word (or symbol) each output's logit belongs to
    known: np.ndarray  # (T,) False where the model's own top-1 stood in for an unknown target
    target_pos: int | None
    out: Path | None


def describe(model: RNNModel) -> str:
    cfg = model.config
    depth = f" depth {cfg.depth}" if cfg.cell == "nlstm" else ""
    return f"{cfg.cell} {cfg.layers}x{cfg.units}{depth}"


def _check_out(out: Path | None, allowed=FIGURE_SUFFIXES) -> None:
    if out is not None and Path(out).suffix.lower() not in allowed:
        raise EdgeRNNError(f"--out must end in {' or '.join(allowed)}, got {out}")


def run_connectivity(run_dir: Path, text: str, target_pos: int | None = None,
                     out: Path | None = None) -> ConnectivityResult:
    """Connectivity of every output position of ``text``; written to ``out`` (.html or .png) if given.

    A PNG shows the strip of ``target_pos`` when one is given, else the whole matrix; the HTML
    page always holds every position (hover to switch), starting at ``target_pos`` or the last one.
    """
    _check_out(out)
    model, vocab = load(run_dir)
    enc = conn.encode_text(model, vocab, text)
    T = len(enc.ids)
    if target_pos is not None and not 0 <= target_pos < T:
        raise EdgeRNNError(f"--target-pos must lie in 0..{T - 1} for this text "
                           f"({T} characters with the leading space), got {target_pos}")
    C = conn.connectivity(model, enc.ids, enc.targets)
    words = vocab.words if model.config.task == "autocomplete" else [figures.shown(s) for s in SYMBOLS]
    names = [words[t] for t in enc.targets]  # charlm: the next symbol
    names = [n if k else f"{n} (model's guess)" for n, k in zip(names, enc.known)]
    if out is not None:
        title = f"connectivity of {describe(model)} ({Path(run_dir).name})"
        if Path(out).suffix.lower() == ".html":
            page = figures.connectivity_html(enc.text, C, names, title, f"text: {enc.text!r}", target_pos)
            figures.write_html(out, page)
        elif target_pos is not None:
            figures.connectivity_strip_png(enc.text, C[target_pos], target_pos, out,
                                           f"{title}: output at position {target_pos} (boxed), "
                                           f"target {names[target_pos]!r}")
        else:
            figures.connectivity_matrix_png(enc.text, C, out, f"{title}, each row divided by its maximum")
    return ConnectivityResult(enc.text, C, names, enc.known, target_pos, out)


def state_panels(model: RNNModel, ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Heat-map panels, in order: for each layer, each memory (Nested LSTM: outer c0, inner c1...)."""
    states = conn.cell_states(model, ids)
    memories = conn.memory_names(model)
    panels = []
    for layer in range(1, model.config.layers + 1):
        for name in memories:
            if model.config.cell == "nlstm":
                d = int(name[1:])
                role = "outer memory" if d == 0 else f"inner memory (depth {d})"
            else:
                role = "memory" if name == "c" else "hidden state"
            panels.append((f"layer {layer} {name}: {role}", states[(layer, name)]))
    return panels


def run_inspect(run_dir: Path, text: str, out: Path, max_units: int = 32) -> list[tuple[str, np.ndarray]]:
    """Heat maps of the cell states over ``text`` written to ``out`` (.png); returns the panels."""
    _check_out(out, (".png",))
    model, vocab = load(run_dir)
    enc = conn.encode_text(model, vocab, text)
    panels = state_panels(model, enc.ids)
    figures.states_png(enc.text, panels, out, max_units,
                       f"cell states of {describe(model)} ({Path(run_dir).name}); "
                       f"the {max_units} most varying units of each panel")
    return panels


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise EdgeRNNError(f"{run_dir} has no {METRICS}: it was not made by edge-rnn train")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise EdgeRNNError(f"{path} is damaged: {err}") from None


def run_curves(run_dir: Path, split: str = "test", max_batches: int | None = None,
               label: str | None = None) -> figures.RunCurves:
    """A run's training records and its accuracy by letters typed on one of its splits."""
    from edge_rnn.evaluate import run_splits

    records = read_metrics(run_dir)
    model, vocab = load(run_dir)
    data = getattr(run_splits(run_dir, vocab), split)
    context = conn.context_accuracy(model, data, max_batches=max_batches)
    return figures.RunCurves(label or f"{Path(run_dir).name} ({describe(model)})", records, context,
                             model.config.task)


def run_plot(run_dirs: list[Path], out: Path, split: str = "test", max_batches: int | None = None,
             labels: list[str] | None = None, title: str = "") -> list[figures.RunCurves]:
    """One figure for several runs: loss and accuracy curves, accuracy by letters typed."""
    _check_out(out, (".png",))
    if split not in ("train", "valid", "test"):
        raise EdgeRNNError(f"unknown split {split!r}; choose train, valid or test")
    labels = labels or [None] * len(run_dirs)
    curves = [run_curves(r, split, max_batches, label) for r, label in zip(run_dirs, labels)]
    figures.runs_png(curves, out, title)
    return curves

"""Figures: connectivity (PNG strip or matrix, self-contained HTML), state heat maps, run curves.

Every PNG is written at a fixed size (``figsize * DPI``, no tight bounding box), so a caller, and the
tests, know its pixel size in advance; files are written to a temporary name and renamed.
Computation lives in ``edge_rnn.connectivity``; this module only draws.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_rnn.io import atomic_path, atomic_write_text  # noqa: E402

DPI = 100
WRAP = 64  # characters per line of a connectivity strip


def shown(ch: str) -> str:
    """A visible glyph for a character: spaces become a middle dot."""
    return "\u00b7" if ch == " " else ch


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def row_normalised(C: np.ndarray) -> np.ndarray:
    """Each output's connectivity divided by its largest value (the article colours it so)."""
    peak = C.max(axis=-1, keepdims=True)
    return np.divide(C, peak, out=np.zeros_like(C), where=peak > 0)


# ---- connectivity ------------------------------------------------------------------------------

def strip_size(n_chars: int) -> tuple[float, float]:
    rows = -(-n_chars // WRAP)
    return 0.6 + 0.16 * min(n_chars, WRAP), 0.9 + 0.32 * rows


def connectivity_strip_png(text: str, row: np.ndarray, target_pos: int, path: Path, title: str = "") -> Path:
    """One output's connectivity as coloured text (the article's figure), wrapped at ``WRAP``.

    ``row`` is that output's connectivity over the input positions; the target character is boxed.
    """
    n = len(text)
    rows = -(-n // WRAP)
    grid = np.full(rows * WRAP, np.nan)
    grid[:n] = row_normalised(np.asarray(row, dtype=np.float64)[None])[0]
    fig, ax = plt.subplots(figsize=strip_size(n))
    ax.imshow(grid.reshape(rows, WRAP), cmap="YlOrRd", vmin=0, vmax=1, aspect="auto",
              extent=(-0.5, WRAP - 0.5, rows - 0.5, -0.5))
    for k, ch in enumerate(text):
        ax.text(k % WRAP, k // WRAP, shown(ch), ha="center", va="center", fontsize=9, family="monospace")
    ax.add_patch(plt.Rectangle((target_pos % WRAP - 0.5, target_pos // WRAP - 0.5), 1, 1,
                               fill=False, lw=1.5, ec="black"))
    ax.set_xlim(-0.5, min(n, WRAP) - 0.5)
    ax.set_axis_off()
    ax.set_title(title or f"connectivity of the output at position {target_pos} (boxed)", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=1 - 0.45 / strip_size(n)[1])
    return _save(fig, path)


def matrix_size(n_chars: int) -> tuple[float, float]:
    side = 1.5 + 0.11 * n_chars
    return side + 1.0, side


def connectivity_matrix_png(text: str, C: np.ndarray, path: Path, title: str = "") -> Path:
    """Every output's connectivity: row = output position, column = input position (row-normalised)."""
    n = len(text)
    fig, ax = plt.subplots(figsize=matrix_size(n))
    image = ax.imshow(np.ma.masked_where(np.tril(np.ones((n, n))) == 0, row_normalised(C)),
                      cmap="YlOrRd", vmin=0, vmax=1, interpolation="nearest")
    labels = [shown(c) for c in text]
    ax.set_xticks(range(n), labels, fontsize=7, family="monospace")
    ax.set_yticks(range(n), labels, fontsize=7, family="monospace")
    ax.set_xlabel("input character")
    ax.set_ylabel("output at character")
    ax.set_title(title or "connectivity (each row divided by its maximum)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.subplots_adjust(left=0.1, right=0.95, bottom=0.08, top=0.93)
    return _save(fig, path)


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
#text {{ font-family: monospace; font-size: 20px; line-height: 1.9; word-break: break-all; }}
#text span {{ padding: 2px 0; cursor: default; }}
#text span.target {{ outline: 2px solid black; }}
.legend {{ display: inline-block; width: 12em; height: 0.9em; vertical-align: middle;
          background: linear-gradient(to right, rgb(255,255,255), rgb(230,85,13)); }}
</style></head><body>
<h2>{title}</h2>
<p>{subtitle}</p>
<p>Hover a character: every earlier character is coloured by how much the model's output there
depends on it (squared L2 norm of the gradient of the target word's logit with respect to the
one-hot input, divided by the largest value for that output).
low <span class="legend"></span> high</p>
<div id="text"></div>
<p id="info"></p>
<script>
const data = {data};
const box = document.getElementById("text"), info = document.getElementById("info");
const spans = Array.from(data.text, (ch, i) => {{
  const s = document.createElement("span");
  s.textContent = ch === " " ? "\\u00a0" : ch;
  s.addEventListener("mouseenter", () => show(i));
  box.appendChild(s);
  return s;
}});
function show(i) {{
  spans.forEach((s, j) => {{
    const v = j <= i ? data.conn[i][j] : 0;
    s.style.background = `rgb(${{255 - 25 * v}},${{255 - 170 * v}},${{255 - 242 * v}})`;
    s.className = j === i ? "target" : "";
  }});
  info.textContent = `output at position ${{i}} ('${{data.text[i]}}'), target: ${{data.targets[i]}}` +
                     `; largest value ${{data.peak[i].toExponential(3)}}`;
}}
show(data.start);
</script>
</body></html>
"""


def connectivity_html(text: str, C: np.ndarray, targets: list[str], title: str, subtitle: str = "",
                      start: int | None = None) -> str:
    """A self-contained page (inline CSS and script, data embedded; nothing fetched)."""
    data = {"text": text, "conn": np.round(row_normalised(C), 4).tolist(), "targets": targets,
            "peak": [float(v) for v in C.max(axis=-1)], "start": len(text) - 1 if start is None else start}
    payload = json.dumps(data).replace("</", "<\\/")  # a '</script>' in the data cannot end the script
    return HTML_TEMPLATE.format(title=html.escape(title), subtitle=html.escape(subtitle), data=payload)


def write_html(path: Path, page: str) -> Path:
    atomic_write_text(Path(path), page)
    return Path(path)


# ---- cell states ---------------------------------------------------------------------------------

def states_size(n_chars: int, n_panels: int, units: int) -> tuple[float, float]:
    return max(6.0, 1.6 + 0.13 * n_chars), n_panels * (0.9 + 0.11 * units) + 0.5


def states_png(text: str, panels: list[tuple[str, np.ndarray]], path: Path, max_units: int = 32,
               title: str = "") -> Path:
    """One heat map per state (units x characters), stacked, characters on the shared x axis.

    Each panel shows its ``max_units`` units that vary most over the text (sorted by variance),
    with a colour scale symmetric about zero; units of different panels are not the same units.
    """
    units = min(max_units, panels[0][1].shape[1])
    fig, axes = plt.subplots(len(panels), 1, figsize=states_size(len(text), len(panels), units),
                             sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels):
        order = np.argsort(-values.var(axis=0))[:units]
        shown_values = values[:, order].T
        limit = float(np.abs(shown_values).max()) or 1.0
        image = ax.imshow(shown_values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        ax.set_ylabel("unit", fontsize=8)
        ax.set_yticks([])
        ax.set_title(name, fontsize=9, loc="left")
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    bottom = axes[-1, 0]
    bottom.set_xticks(range(len(text)), [shown(c) for c in text], fontsize=8, family="monospace")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.35 / fig.get_figheight(),
                        top=1 - 0.45 / fig.get_figheight(), hspace=0.35)
    return _save(fig, path)


# ---- training curves and context accuracy -----------------------------------------------------------

@dataclass
class RunCurves:
    """What ``runs_png`` draws for one run: its metrics.jsonl records and its context accuracy."""

    label: str
    records: list[dict]
    context: dict | None = None  # from edge_rnn.connectivity.context_accuracy
    task: str = "autocomplete"
    notes: list[str] = field(default_factory=list)


RUNS_SIZE = (15.0, 4.6)


def runs_png(runs: list[RunCurves], path: Path, title: str = "") -> Path:
    """Loss and accuracy against steps (train solid, validation dashed), and accuracy by letters
    typed (top-1 solid, top-3 dotted), one colour per run."""
    fig, (loss_ax, acc_ax, ctx_ax) = plt.subplots(1, 3, figsize=RUNS_SIZE)
    for k, run in enumerate(runs):
        colour = f"C{k}"
        train = [r for r in run.records if r.get("split") == "train"]
        valid = [r for r in run.records if r.get("split") == "valid"]
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=colour, label=f"{run.label} train")
        loss_ax.plot([r["step"] for r in valid], [r["ce"] for r in valid], "--", color=colour, label=f"{run.label} valid")
        acc_ax.plot([r["step"] for r in train], [r["acc"] for r in train], color=colour)
        # training accuracy leaves <unk> targets out, so the validation line does too (top1_known)
        acc_ax.plot([r["step"] for r in valid], [r.get("top1_known", r["top1"]) for r in valid], "--", color=colour)
        if run.context is not None:
            c = run.context
            ctx_ax.plot(c["letters"], c["top1"], "o-", ms=3, color=colour, label=f"{run.label} top-1")
            ctx_ax.plot(c["letters"], c["top3"], ":", color=colour, label=f"{run.label} top-3")
    loss_ax.set(xlabel="step", ylabel="cross-entropy (nats)", title="loss (train solid, valid dashed)")
    acc_ax.set(xlabel="step", ylabel="top-1 accuracy (targets other than <unk>)",
               title="accuracy (train solid, valid dashed)")
    last = max((int(r.context["letters"][-1]) for r in runs if r.context is not None), default=0)
    ctx_ax.set(xlabel=f"letters of the word typed (0 = the space; {last} = {last}+)",
               ylabel="accuracy (<unk> = miss)", title="accuracy by letters typed", ylim=(0, 1))
    for ax in (loss_ax, acc_ax, ctx_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=7)
    if any(r.context is not None for r in runs):
        ctx_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86 if title else 0.92, wspace=0.25)
    return _save(fig, path)

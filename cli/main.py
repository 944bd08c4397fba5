"""The ``edge-rnn`` command line: parse, call one library function, show the result.

Every command turns the library's ``EdgeRNNError`` (bad input, missing or corrupt files) into one
line on stderr and exit status 1; heavy imports happen inside commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from cli.bench import bench
from cli.demo import demo
from cli.keyboard import KSR_PROTOCOL
from cli.quantize import quantize
from cli.show import (completions_table, console, err_console, key_value_table, metrics_table, plain_lines,
                      training_progress)
from cli.visualize import connectivity, inspect, plot

app = typer.Typer(
    help="Train small recurrent language models with MLX and ship them as per-keystroke "
         "autocomplete step functions (ONNX, Core ML).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DEMO_PROMPTS = ["the capital of fra", "maria was born in spain so she speaks sp", "the ", "he went to the"]


@app.command()
def train(
    cell: Optional[str] = typer.Option(None, help="Recurrent cell: rnn, gru, lstm, cifg (coupled-gate LSTM) or nlstm (Nested LSTM)."),
    preset: Optional[str] = typer.Option(None, help="Named configuration from models/ (e.g. tiny, edge-gru, article-nlstm); flags override it."),
    layers: Optional[int] = typer.Option(None, help="Number of stacked recurrent layers."),
    units: Optional[int] = typer.Option(None, help="Hidden units per layer."),
    depth: Optional[int] = typer.Option(None, help="Nesting depth of the Nested LSTM (>= 2)."),
    embed_dim: Optional[int] = typer.Option(None, help="Size of the character embedding."),
    vocab_size: Optional[int] = typer.Option(None, help="Output words: the N most frequent words of the training split."),
    head_dim: Optional[int] = typer.Option(None, help="Bottleneck: project the last layer to this width before the word head (cuts the head's cost per step; 0: none). Exported bundles fold it into one head."),
    corpus: str = typer.Option("text8", help="'text8' (downloaded once, checksum-verified, cached), 'demo' (built in, offline) or a path to a UTF-8 text file."),
    task: Optional[str] = typer.Option(None, help="'autocomplete' (predict the word being typed) or 'charlm' (next character, bits per char)."),
    steps: int = typer.Option(2000, help="Total optimisation steps (with --resume: the new total)."),
    batch_size: int = typer.Option(32, help="Observations (of at most 200 characters) per step."),
    lr: float = typer.Option(1e-2, help="Peak Adam learning rate of the schedule (linear warm-up, cosine decay to 10 %)."),
    clip: Optional[float] = typer.Option(None, help="Clip the global gradient norm to this value (off by default, as in the article)."),
    dropout: float = typer.Option(0.0, help="Dropout rate on the non-recurrent connections (embedding output, between layers, before the head); never on the recurrent state. 0: none."),
    weight_decay: float = typer.Option(0.2, help="Decoupled weight decay (AdamW) on the weight matrices; biases are never decayed. 0: plain Adam."),
    ema: float = typer.Option(0.998, help="Decay of the exponential moving average of the weights that validation and the saved model use (early in a run the average spans about its last tenth). 0: the last weights."),
    rechunk: bool = typer.Option(False, "--rechunk/--no-rechunk", help="Cut the training text at other word boundaries each epoch, so a word is seen after other amounts of context (autocomplete)."),
    stateful: bool = typer.Option(False, "--stateful/--no-stateful", help="Truncated BPTT: each batch row reads the next 200 characters of its own lane of the training text and starts from the state the row ended its last step with (a keyboard streams past 200 characters)."),
    distill: float = typer.Option(0.0, help="Weight of a Kneser-Ney word trigram, built from the training split, in the target at each space before a word (its top-32 next words: knowledge distillation, autocomplete). 0: none."),
    label_smoothing: float = typer.Option(0.0, help="Share of every target spread evenly over all words (label smoothing; the word objective). 0: none."),
    objective: str = typer.Option("word", help="'word': cross-entropy over every word (the article's). 'prefix': over the words starting with the letters typed so far (what a keyboard shows; edge_rnn.prefix). Autocomplete only."),
    train_fraction: float = typer.Option(1.0, help="Train on this share of the training text only, whole runs of it drawn at random (data-scaling studies); the vocabulary, validation and test splits stay the whole corpus's."),
    eval_every: int = typer.Option(250, help="Validate and checkpoint every N steps."),
    minutes: Optional[float] = typer.Option(None, help="Stop after this many minutes of training even if --steps is not reached."),
    checkpoint_minutes: float = typer.Option(5.0, help="Also checkpoint after this many minutes since the last checkpoint (a kill loses at most this much)."),
    log_seconds: float = typer.Option(30.0, help="Write a progress line to RUN_DIR/train.log (and to stdout when it is not a terminal) this often."),
    seed: int = typer.Option(0, help="Seed for initialisation, data split and batch order."),
    autodiff: bool = typer.Option(False, help="Use MLX autodiff instead of the cells' hand-written backward (reference path)."),
    out: Optional[Path] = typer.Option(None, help="Run directory to create (default: runs/<preset or cell>-<time>)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    distributed: bool = typer.Option(False, "--distributed", help="Data-parallel over the ranks that mlx.launch started (joined automatically when launched; this flag makes it an error not to be). --batch-size stays the global batch."),
):
    """Train a model and write a run directory (config, weights, vocabulary, metrics)."""
    from edge_rnn import distributed as ranks_of_run
    from edge_rnn.train import TrainConfig
    from edge_rnn.train import train as run_training

    model_config = _model_config(cell, preset, layers, units, depth, embed_dim, vocab_size, task, head_dim)
    if out is None:
        if resume:
            raise _fail("--resume needs --out RUN_DIR")
        out = Path("runs") / f"{preset or model_config.cell}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = TrainConfig(corpus=corpus, steps=steps, batch_size=batch_size, lr=lr, clip=clip, dropout=dropout,
                         weight_decay=weight_decay, ema=ema, rechunk=rechunk, stateful=stateful, distill=distill,
                         label_smoothing=label_smoothing, objective=objective, train_fraction=train_fraction,
                         eval_every=eval_every, seed=seed,
                         autodiff=autodiff, minutes=minutes, checkpoint_minutes=checkpoint_minutes, log_seconds=log_seconds,
                         exact_vocab=vocab_size is not None, distributed=distributed)
    ranks = ranks_of_run.init(distributed)
    if not ranks.main:  # rank 0 speaks for the run
        run_training(model_config, config, out, resume=resume)
        return
    parallel = (f", {ranks.size} ranks x {batch_size // max(ranks.size, 1)} rows (global batch {batch_size})"
                if ranks.size > 1 else "")
    console.print(f"training [bold]{model_config.cell}[/] {model_config.layers}x{model_config.units} "
                  f"on {corpus!r}{parallel} -> {out}")
    with _interruptible(out), training_progress(steps) as hook:
        final = run_training(model_config, config, out, resume=resume, progress=hook, echo=plain_lines())
    console.print(metrics_table(f"validation after {final['steps']} steps", {"valid": final}))
    console.print(f"run saved in [bold]{out}[/]")


@contextmanager
def _interruptible(out: Path):
    """Ctrl-C during training: the loop has saved a checkpoint; say how to go on, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        saved = "checkpoint saved; " if (Path(out) / "checkpoint" / "step.json").exists() else ""
        err_console.print(f"interrupted: {saved}continue with the same command plus --resume --out {out}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _model_config(cell, preset, layers, units, depth, embed_dim, vocab_size, task, head_dim=None):
    from dataclasses import asdict

    from edge_rnn.model import ModelConfig, load_preset

    base = asdict(load_preset(preset)) if preset else {}
    given = dict(cell=cell, layers=layers, units=units, depth=depth, embed_dim=embed_dim,
                 vocab_size=vocab_size, task=task, head_dim=head_dim)
    return ModelConfig.from_dict({**base, **{k: v for k, v in given.items() if v is not None}})


@app.command("eval", epilog=KSR_PROTOCOL)
def eval_(
    source: Path = typer.Argument(..., metavar="RUN_DIR|BUNDLE", help="A run directory written by 'edge-rnn train', or (with --keyboard) an exported ONNX bundle."),
    split: str = typer.Option("test", help="Which split of the run to evaluate: train, valid or test (without --corpus)."),
    corpus: Optional[str] = typer.Option(None, help="Evaluate on this UTF-8 text file instead (normalised like training, labelled with the model's vocabulary; 'demo' is the built-in corpus)."),
    keyboard: bool = typer.Option(False, "--keyboard", help="Keyboard metrics beside two non-neural keyboards built from the run's training split (prefix frequency, Kneser-Ney word trigram): top-1/top-3 with the prefix filter at every (word, letters typed) position and by letters typed, next-word top-3, OOV rate, keystroke savings rate (protocol below)."),
    max_words: Optional[int] = typer.Option(None, help="--keyboard: score only the first N words of the text."),
    batch_size: int = typer.Option(64, help="Batch size (does not change the numbers)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
):
    """Evaluate a model: cross-entropy and top-1/top-3 (BPC for charlm) on its held-out split or
    any text file; with [bold]--keyboard[/] what a typist sees and saves, for the model (a run, or
    exactly the bundle you ship: fp32, int8, prefix head) and for both baselines."""
    import json

    if keyboard:
        from cli.keyboard import keyboard_progress, print_keyboard
        from edge_rnn.keyboard import keyboard_report

        if split != "test":
            raise _fail("--keyboard scores the test split or --corpus PATH; --split does not apply")
        with keyboard_progress() as hook:
            report = keyboard_report(source, corpus, max_words, hook)
        print(json.dumps(report, indent=2)) if json_out else print_keyboard(report)
        return
    if max_words is not None:
        raise _fail("--max-words applies to --keyboard")
    if (source / "manifest.json").is_file():
        raise _fail(f"{source} is a bundle: evaluate it with --keyboard (cross-entropy needs the run directory)")
    from edge_rnn.evaluate import evaluate_corpus, evaluate_run

    if corpus is not None:
        result, where = evaluate_corpus(source, corpus, batch_size), corpus
    else:
        result, where = evaluate_run(source, split, batch_size), split
    if json_out:
        print(json.dumps(result, indent=2))
        return
    console.print(metrics_table(f"{source} on {where}", {k: v for k, v in result.items()}))


@app.command()
def info(run_dir: Path = typer.Argument(..., help="A run directory written by 'edge-rnn train'.")):
    """Show a run's architecture, size, vocabulary and latest metrics."""
    import json

    from edge_rnn.model import METRICS, load

    model, vocab = load(run_dir)
    cfg = model.config
    items = {"cell": cfg.cell, "layers x units": f"{cfg.layers} x {cfg.units}", "task": cfg.task,
             "embedding": cfg.embed_dim, "outputs": cfg.n_outputs,
             "recurrent parameters": model.recurrent_parameters(), "parameters": model.num_parameters()}
    if cfg.cell == "nlstm":
        items["depth"] = cfg.depth
    if cfg.head_dim:
        items["head bottleneck"] = cfg.head_dim
    console.print(key_value_table(str(run_dir), items))
    metrics = Path(run_dir) / METRICS
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        valid = [r for r in records if r.get("split") == "valid"]
        if valid:
            console.print(metrics_table(f"latest validation (step {valid[-1]['step']})", {"valid": valid[-1]}))


@app.command()
def complete(
    args: List[str] = typer.Argument(..., help="SOURCE [TEXT]: a run directory or an ONNX bundle, then the text typed so far (with --bundle: just [TEXT])."),
    bundle: Optional[Path] = typer.Option(None, help="An exported ONNX bundle (same as giving it as SOURCE)."),
    top_k: int = typer.Option(3, help="How many suggestions to show."),
    restart: Optional[str] = typer.Option(None, help="Long input: 'continuous' (the runtime's default) lets the state run on (the last 200 characters kept, backspace exact); 'observation' restarts from a zero state at a word boundary every ~200 characters, like training, with the last 30 characters of whole words as context."),
):
    """Suggest completions of the word being typed. With TEXT, once:
    [bold]edge-rnn complete runs/x "the capital of fra"[/]. Without TEXT, an interactive line:
    suggestions and latency update on every key, Backspace goes back through the state stack, Tab
    or 1/2/3 accepts a suggestion, Ctrl-C/Ctrl-D quits."""
    from edge_rnn.runtime import RESTART, open_session

    if bundle is not None:
        args = [str(bundle), *args]
    if len(args) > 2:
        raise _fail("give SOURCE and at most one TEXT (quote it)")
    session = open_session(Path(args[0]), restart=restart or RESTART)
    if len(args) == 2:
        console.print(completions_table([(args[1], session.complete(args[1], top_k))]))
        return
    if not sys.stdin.isatty():
        raise _fail("no TEXT given and stdin is not a terminal: pass the text to complete")
    from cli.interactive import run

    run(session, top_k)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by 'edge-rnn train'."),
    format: str = typer.Option("onnx", "--format", help="onnx or coreml."),
    out: Optional[Path] = typer.Option(None, help="Bundle directory to write (default: bundles/<run>-<format>)."),
    top_k: int = typer.Option(3, help="Suggestions the step function returns."),
    coreml_state: str = typer.Option("io", help="Core ML only: 'io' (state as inputs/outputs, iOS 15+) or 'mlstate' (Core ML states, iOS 18+)."),
    precision: str = typer.Option("fp32", help="fp32 or fp16 (Core ML: fp16 compute, head and softmax kept in fp32; ONNX: fp16 weights, fp32 compute and state)."),
    force: bool = typer.Option(False, help="Replace an existing non-empty output directory."),
    ort: bool = typer.Option(False, "--ort", help="ONNX only: also write the ORT format models (.ort) that ONNX Runtime Mobile loads and required_operators.config for a reduced ONNX Runtime build (onnxruntime's own converter), each .ort checked against its .onnx."),
    prefix_head: bool = typer.Option(False, "--prefix-head", help="Order the words alphabetically and compute only the rows of the typed prefix (a 'range' input); suggestions equal the full head's, probabilities are renormalised over the prefix (Core ML: always top-k entries, ids >= the range's end are padding). Without it the bundle also outputs log_probs over every word."),
    boundary_words: int = typer.Option(0, "--boundary-words", help="ONNX, with --prefix-head: at a word boundary rank only this many most frequent words (model_boundary.onnx; the whole head's logits for them, about a quarter of its time at 1000 of 10000 words); 0: the whole head."),
):
    """Export a trained model as an app bundle: step-function model, vocab.json, manifest.json."""
    from edge_rnn.export.bundle import export_bundle

    out = out or Path("bundles") / f"{Path(run_dir).name}-{format}"
    path = export_bundle(run_dir, out, fmt=format, top_k=top_k, coreml_state=coreml_state,
                         precision=precision, force=force, with_log_probs=not prefix_head,
                         prefix_head=prefix_head, ort_format=ort, boundary_words=boundary_words)
    console.print(f"bundle written to [bold]{path}[/]")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Where to put the run (replaced if it exists)."),
    steps: int = typer.Option(600, help="Training steps (the default takes a few minutes on 2 CPU cores)."),
):
    """The main job end to end, offline: train a small model on the built-in demo corpus,
    evaluate it against the most-frequent-word baseline, show completions, then export it as an
    ONNX bundle, check the bundle completes the same, and time its keystrokes."""
    import shutil

    from edge_rnn.evaluate import evaluate_run
    from edge_rnn.model import load_preset
    from edge_rnn.runtime import open_session
    from edge_rnn.train import TrainConfig
    from edge_rnn.train import train as run_training

    shutil.rmtree(out, ignore_errors=True)
    console.rule("1. train: tiny GRU on the built-in demo corpus")
    config = TrainConfig(corpus="demo", steps=steps, batch_size=32, lr=1e-2, eval_every=200)
    with training_progress(steps) as hook:
        run_training(load_preset("tiny"), config, out, progress=hook, echo=plain_lines())
    console.rule("2. evaluate on the held-out test split")
    console.print(metrics_table("test split", evaluate_run(out, "test")))
    console.rule("3. complete")
    session = open_session(out)
    from_run = [(p, session.complete(p, 3)) for p in DEMO_PROMPTS]
    console.print(completions_table(from_run))
    bundle = _quickstart_bundle(out, from_run)
    console.print(f"run saved in [bold]{out}[/], bundle in [bold]{bundle}[/]; try: "
                  f"edge-rnn complete --bundle {bundle} \"the capital of ger\"")


def _quickstart_bundle(run: Path, from_run: list) -> Path:
    """Quickstart's last steps: export the run as an ONNX bundle (as ``edge-rnn export`` does),
    show that the bundle suggests what the run does, and time a few hundred keystrokes of it."""
    import numpy as np

    from cli.bench import bench_table
    from edge_rnn.bench import run_bench
    from edge_rnn.export.bundle import export_bundle
    from edge_rnn.runtime import open_session

    bundle = run.with_name(run.name + "-onnx")
    console.rule("4. export an ONNX bundle and complete from it")
    export_bundle(run, bundle, force=True, with_log_probs=True)
    session = open_session(bundle)
    from_bundle = [(p, session.complete(p, 3)) for p in DEMO_PROMPTS]
    console.print(completions_table(from_bundle))
    same = all([w for w, _ in a] == [w for w, _ in b] and np.allclose([q for _, q in a], [q for _, q in b], atol=1e-5)
               for (_, a), (_, b) in zip(from_run, from_bundle))
    console.print("edge-rnn complete --bundle gives the run's suggestions: same words, same order, same "
                  "probabilities" if same else "[red]the bundle's suggestions differ from the run's[/]")
    console.rule("5. bench: per-keystroke latency of the bundle (ONNX Runtime, 1 thread)")
    console.print(bench_table(run_bench(bundle, steps=300, warmup=50)))
    return bundle


app.command()(quantize)
app.command()(bench)
app.command()(connectivity)
app.command()(inspect)
app.command()(plot)
app.command()(demo)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def main() -> None:
    """Console entry point: library errors become one line and exit status 1, never a traceback."""
    from rich.markup import escape

    from edge_rnn.io import EdgeRNNError

    try:
        app()
    except EdgeRNNError as err:
        message = " ".join(str(err).split())  # one line even when a library's message has several
        err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)

"""One rank of a tiny data-parallel run, started by tests/test_distributed.py under mlx.launch.

    python distributed_worker.py MODE CORPUS OUT
MODE "train": edge_rnn.train.train, then this rank's parameters and metrics go to OUT.
MODE "die": the CLI, with rank 1 killing itself (os._exit) when it reaches step 3.
"""

import json
import os
import sys

from mlx.utils import tree_flatten

SETTINGS = dict(steps=12, batch_size=8, lr=1e-2, eval_every=6, seed=3, dropout=0.2)  # masks too must split


def main() -> None:
    mode, corpus, out = sys.argv[1:4]
    rank = int(os.environ.get("MLX_RANK", "0"))
    if mode == "die":
        if rank == 1:
            import edge_rnn.train as training

            real = training.batch_at

            def dying(data, step, *args):
                if step == 3:
                    os._exit(17)
                return real(data, step, *args)

            training.batch_at = dying
        from cli.main import main as cli

        sys.argv = ["edge-rnn", "train", "--preset", "tiny", "--corpus", corpus, "--steps", "200",
                    "--batch-size", "8", "--out", f"{out}/run"]
        cli()
        return

    import mlx.core as mx

    import edge_rnn.train as training
    from edge_rnn.model import load_preset

    models, initial = [], []  # this rank's own model (rank 0's saved one proves nothing about the others)
    real_prepare = training.prepare

    def prepare(*args):
        built = real_prepare(*args)
        models.append(built[0])
        initial.append(dict(tree_flatten(built[0].parameters())))  # MLX arrays are immutable
        return built

    training.prepare = prepare
    final = training.train(load_preset("tiny"), training.TrainConfig(corpus=corpus, **SETTINGS), f"{out}/run")
    mx.save_safetensors(f"{out}/rank{rank}.safetensors", dict(tree_flatten(models[0].parameters())))
    mx.save_safetensors(f"{out}/init{rank}.safetensors", initial[0])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(final, f)


if __name__ == "__main__":
    main()

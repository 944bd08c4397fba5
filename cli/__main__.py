"""``python -m cli``: the edge-rnn command line (what mlx.launch and mpirun can start)."""

from cli.main import main

main()

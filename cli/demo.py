"""``edge-rnn demo BUNDLE``: the browser demo (web/) over a bundle, served on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.show import console


def demo(
    bundle: Path = typer.Argument(..., help="An ONNX bundle (edge-rnn export --format onnx; quantized and prefix-head bundles too)."),
    port: int = typer.Option(0, help="Port on 127.0.0.1 (0: a free one)."),
):
    """Serve the autocomplete page and the bundle on 127.0.0.1 (offline: nothing comes from a CDN); Ctrl-C stops it."""
    from edge_rnn.demo import demo_server, url

    server = demo_server(bundle, port)
    console.print(f"serving {bundle} at [bold]{url(server)}[/] (Ctrl-C stops)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()

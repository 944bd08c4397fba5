"""The browser demo's server: the page (``web/``), onnxruntime-web's WebAssembly build and one
bundle, on 127.0.0.1, from the standard library's ``http.server``.

Everything the page loads comes from this server (no CDN), so it works with the network
unplugged. URL layout, which ``web/app.mjs`` relies on::

    /               web/index.html        /app.mjs, /runtime.mjs   web/
    /ort/NAME       onnxruntime-web's dist/ (npm ci in the repository root installs it)
    /bundle/NAME    the bundle's manifest.json and the files it lists (nothing else of the folder)

Responses are gzip-compressed when the browser accepts it (the 14 MB .wasm is ~3.5 MB on the
wire), compressed once per file when the server starts and kept in memory; ``.wasm`` is served as ``application/wasm``
(WebAssembly's streaming compile requires it) and ``.mjs`` as JavaScript.
"""

from __future__ import annotations

import gzip
import http.server
import threading
from functools import lru_cache
from pathlib import Path

from edge_rnn.export.bundle import MANIFEST, read_manifest
from edge_rnn.io import EdgeRNNError

ROOT = Path(__file__).resolve().parent.parent  # the repository: web/ and node_modules/ live here
WEB = ROOT / "web"
ORT_DIST = ROOT / "node_modules" / "onnxruntime-web" / "dist"
# what the page's ONNX Runtime build (ort.wasm.min.mjs, SIMD, numThreads = 1) loads
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "app.mjs", "runtime.mjs")
TYPES = {".html": "text/html; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".json": "application/json",
         ".wasm": "application/wasm", ".onnx": "application/octet-stream",
         ".bin": "application/octet-stream", ".ort": "application/octet-stream"}


def demo_routes(bundle: Path) -> dict[str, Path]:
    """URL path -> file, for the page, ONNX Runtime Web and the bundle (which must be ONNX)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("target") != "onnx":
        raise EdgeRNNError(f"{bundle} is a {manifest.get('target')} bundle; the browser demo runs ONNX bundles")
    missing = [ORT_DIST / f for f in ORT_FILES if not (ORT_DIST / f).is_file()]
    if missing:
        raise EdgeRNNError(f"onnxruntime-web is not installed ({missing[0]} is missing): "
                           f"run 'npm ci' in {ROOT}")
    routes = {"/": WEB / "index.html", **{f"/{name}": WEB / name for name in PAGE_FILES}}
    routes.update({f"/ort/{name}": ORT_DIST / name for name in ORT_FILES})
    routes.update({f"/bundle/{name}": bundle / name for name in [MANIFEST, *manifest.get("files", {})]})
    return routes


@lru_cache(maxsize=64)
def _gzipped(path: Path, mtime: float) -> bytes:
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


class DemoHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Path] = {}
    quiet = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.routes.get(self.path.split("?", 1)[0])
        if path is None or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        gzip_ok = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzip_ok:
            body = _gzipped(path, path.stat().st_mtime)
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        if gzip_ok:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def demo_server(bundle: Path, port: int = 0, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """A server for ``bundle`` on 127.0.0.1:``port`` (0: a free port), not yet serving: call
    ``serve_forever()`` (``url(server)`` says where it is)."""
    routes = demo_routes(bundle)
    for path in set(routes.values()):  # compress now, not while the page waits (~1 s for the wasm)
        _gzipped(path, path.stat().st_mtime)
    handler = type("Handler", (DemoHandler,), {"routes": routes, "quiet": quiet})
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise EdgeRNNError(f"cannot listen on 127.0.0.1:{port}: {err.strerror}") from None


def url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve_in_thread(bundle: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """The server running in a daemon thread (tests, benchmarks); ``shutdown()`` stops it."""
    server = demo_server(bundle, port, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


__all__ = ["demo_routes", "demo_server", "serve_in_thread", "url", "ORT_FILES"]

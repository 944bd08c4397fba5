"""The app side: the JavaScript runtime (web/runtime.mjs) in headless Chromium and in Node,
checked against the Python runtime on the same bundles; the demo server and its CLI.

Needs Debian's ``chromium`` (``/usr/bin/chromium``), Playwright for Python and ``npm ci`` in the
repository root (onnxruntime-web, onnxruntime-node): ``.ci/run`` installs them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from app_scenario import ACTIONS, K, MAX_CHARS, STACK_DEPTH, cases, expected
from edge_rnn.demo import ORT_FILES, serve_in_thread, url
from edge_rnn.export.bundle import export_bundle
from edge_rnn.io import EdgeRNNError

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
LISTED = 20  # words of the boundary list of the "listed-int8" bundle


@pytest.fixture(scope="module")
def app_bundles(trained, tmp_path_factory):
    """The trained tiny model as a plain bundle (full head with log_probs), a prefix-head one,
    that one quantized to int8 (its head rows int8, sliced by the range in the graph), and an int8
    prefix-head one whose word boundaries rank only the 20 most frequent words."""
    from edge_rnn.quantize import quantize

    run, _ = trained
    out = tmp_path_factory.mktemp("app")
    prefix = export_bundle(run, out / "prefix", prefix_head=True)
    listed = export_bundle(run, out / "listed", prefix_head=True, boundary_words=LISTED)
    return {"plain": export_bundle(run, out / "plain", with_log_probs=True), "prefix": prefix,
            "prefix-int8": quantize(prefix, "int8", out=out / "prefix-int8", max_chars=300)[0],
            "listed-int8": quantize(listed, "int8", out=out / "listed-int8", max_chars=300)[0]}


def test_scenario_is_not_trivial(app_bundles):
    """The checks below mean something only if the scenario shows words and rebuilds a state."""
    for bundle in app_bundles.values():
        steps = expected(bundle)
        assert all(s["suggestions"] for s in steps)
        assert sum(len(s["suggestions"]) == K for s in steps) >= len(steps) - 2
        assert len({tuple(w for w, _ in s["suggestions"]) for s in steps}) >= 4
    assert max(n for a, n in ACTIONS if a == "backspace") > STACK_DEPTH  # past the stack: prefill
    # the boundary list changes what some steps suggest (so the runtimes' graph choice is checked)
    assert expected(app_bundles["listed-int8"]) != expected(app_bundles["prefix-int8"])
    typed = sum(len(arg) for action, arg in ACTIONS if action == "type")
    assert typed > MAX_CHARS  # the field drops its front (accepts add more): later rebuilds start from marks
    # the restart policies differ on this text (so the JavaScript restarts are checked too)
    assert expected(app_bundles["plain"], "observation") != expected(app_bundles["plain"], "continuous")


def test_node_runtime_matches_python(app_bundles, tmp_path):
    """Every bundle under both restart policies (the page runs the default one)."""
    written = cases(app_bundles.values())
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(written))
    result = subprocess.run(["node", "--test", "examples/node/"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "EDGE_RNN_APP_CASES": str(path)}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^# pass {2 * len(written)}$", result.stdout, re.M) and re.search(r"^# fail 0$", result.stdout, re.M)


def test_node_cli_prints_suggestions(app_bundles):
    bundle = app_bundles["plain"]
    result = subprocess.run(["node", "examples/node/autocomplete.mjs", str(bundle), "Omar moved from Vietnam to Sp"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from edge_rnn.runtime import open_session

    words = [w for w, _ in open_session(bundle).complete("Omar moved from Vietnam to Sp", K)]
    assert [part.split()[0] for part in result.stdout.strip().split("  |  ")] == words
    damaged = subprocess.run(["node", "examples/node/autocomplete.mjs", str(ROOT / "web")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert damaged.returncode == 1 and damaged.stderr.startswith("error: not a bundle")


def _page_state(page) -> tuple[str, list[list]]:
    page.evaluate("window.edgeRnn.idle()")
    words = page.locator(".chip:not([disabled]) .word").all_inner_texts()
    state = page.evaluate("[window.edgeRnn.session.text, window.edgeRnn.suggestions()]")
    assert [w for w, _ in state[1]] == words  # what the page shows is what the runtime says
    return state[0], state[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "prefix", "prefix-int8", "listed-int8"])
def test_page_in_chromium_matches_python(app_bundles, kind):
    """Type, backspace (past the stack: prefill), accept chips in the real page; compare every
    step with the Python runtime; only 127.0.0.1 is ever asked for anything."""
    from playwright.sync_api import sync_playwright

    bundle = app_bundles[kind]
    want = expected(bundle)
    server = serve_in_thread(bundle)
    requests, errors = [], []
    try:
        with sync_playwright() as p:
            # the network unplugged: every host name fails to resolve, except the loopback address
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url(server) + f"?stack={STACK_DEPTH}&chars={MAX_CHARS}")
            page.evaluate("window.edgeRnn.ready")
            label = page.locator("#model").inner_text()  # the page says which head it runs
            assert ("prefix-range head" in label) == kind.startswith(("prefix", "listed")), label
            assert (f"{LISTED}-word boundary list" in label) == (kind == "listed-int8"), label
            page.focus("#text")
            for (action, arg), step in zip(ACTIONS, want):
                if action == "type":
                    page.keyboard.type(arg)
                elif action == "backspace":
                    for _ in range(arg):
                        page.keyboard.press("Backspace")
                else:
                    page.evaluate("window.edgeRnn.idle()")
                    page.locator(".chip").nth(arg).click()
                text, got = _page_state(page)
                where = f"{kind}: after {action} {arg!r}"
                assert text == step["text"], where
                assert [w for w, _ in got] == [w for w, _ in step["suggestions"]], where
                assert [q for _, q in got] == pytest.approx([q for _, q in step["suggestions"]], abs=1e-5), where
            latency = page.locator("#status").inner_text()
            assert re.match(r"last keystroke: \d+\.\d\d ms", latency)
            bars = page.locator(".chip .fill").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
            assert bars == pytest.approx([100 * p for _, p in want[-1]["suggestions"]], abs=0.06)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"demo-{kind}.png"))
            browser.close()
    finally:
        server.shutdown()
    assert not errors
    assert requests and all(r.startswith(url(server)) for r in requests)
    assert any(r.endswith(".wasm") for r in requests) and any("/bundle/weights.bin" in r for r in requests)


def test_server_types_and_routes(app_bundles):
    server = serve_in_thread(app_bundles["prefix"])
    try:
        base = url(server)
        for path, mime in [("ort/" + ORT_FILES[2], "application/wasm"), ("runtime.mjs", "text/javascript"),
                           ("bundle/manifest.json", "application/json"), ("", "text/html")]:
            with urllib.request.urlopen(base + path) as response:
                assert response.headers["Content-Type"].startswith(mime), path
        request = urllib.request.Request(base + "bundle/weights.bin", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request) as response:
            assert response.headers["Content-Encoding"] == "gzip"
        for missing in ("bundle/config.json", "../pyproject.toml", "ort/ort.all.min.mjs"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + missing)
    finally:
        server.shutdown()


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a test run started in the background (``cmd &``) ignores SIGINT,
    its children inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_cli_prints_url_and_stops_on_ctrl_c(app_bundles):
    proc = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "demo",
                             str(app_bundles["plain"])], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
                            preexec_fn=_interruptible)
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        with urllib.request.urlopen(found.group(0)) as response:
            assert b"edge-rnn autocomplete" in response.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()  # never leave a server behind when it did not stop
    assert proc.returncode == 0 and "stopped" in out


def test_demo_refuses_what_it_cannot_serve(tmp_path):
    with pytest.raises(EdgeRNNError, match="not a bundle"):
        serve_in_thread(tmp_path)
    result = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "demo", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1

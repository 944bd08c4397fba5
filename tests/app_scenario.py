"""The keyboard scenario the JavaScript runtime is checked on, and what the Python runtime says.

Shared by the browser test and the Node test (``tests/test_app.py``): the same edits go through
``edge_rnn.runtime`` (the reference) and through ``web/runtime.mjs`` (in Chromium, in Node), and
the suggestions after every edit must be the same words in the same order. ``STACK_DEPTH`` is
small so that the long backspace runs past the stack's bottom and rebuilds through the prefill
graph from a mark, and ``MAX_CHARS`` so that the text outgrows it (the field drops its front, or
restarts its observation), in JavaScript as in Python, under both restart policies.
"""

from __future__ import annotations

from pathlib import Path

from edge_rnn.runtime import RESTART, RESTARTS, normalise, open_session

K = 3
STACK_DEPTH = 3
MAX_CHARS = 48
# (action, argument): type text, backspace n characters, accept the j-th suggestion
ACTIONS = [("type", "Omar moved from Vietnam to Sp"), ("backspace", 2), ("type", "s"), ("backspace", 7),
           ("accept", 0), ("type", "he still m"), ("backspace", 1), ("type", "m"), ("accept", 1),
           ("type", "the pho of h")]
NORMALISE_CASES = ["The  Capital-of FRANCE!! is Paris, 2024", "café au lait", " lead", "trail ", "",
                   "123", "don't <unk> stop", "a"]


def expected(bundle: Path, restart: str = RESTART) -> list[dict]:
    """After each action: the session's text and its suggestions (word, probability)."""
    session = open_session(bundle, stack_depth=STACK_DEPTH, max_chars=MAX_CHARS, restart=restart)
    out = []
    for action, arg in ACTIONS:
        if action == "type":
            session.type(arg)
        elif action == "backspace":
            session.backspace(arg)
        else:
            session.accept(session.suggestions(K)[arg][0])
        out.append({"action": [action, arg], "text": session.text,
                    "suggestions": [[w, p] for w, p in session.suggestions(K)]})
    return out


def case(bundle: Path, restart: str = RESTART) -> dict:
    """Everything the Node test needs for one bundle under one restart policy."""
    return {"bundle": str(bundle), "restart": restart, "k": K, "stack_depth": STACK_DEPTH, "max_chars": MAX_CHARS,
            "steps": expected(bundle, restart), "normalise": {text: normalise(text) for text in NORMALISE_CASES}}


def cases(bundles) -> list[dict]:
    """The Node test's cases: every bundle under every restart policy."""
    return [case(bundle, restart) for bundle in bundles for restart in RESTARTS]

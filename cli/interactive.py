"""``edge-rnn complete SOURCE`` without text: a line editor that autocompletes as you type.

prompt_toolkit draws the screen and reads the keys; every change of the line goes through
``Session.edit`` (type what was appended, backspace through the state stack), so the suggestions
and the latency shown are those of the runtime an app embeds. Tab accepts the first suggestion,
1/2/3 accept that one (digits are not input symbols anyway), Ctrl-C or Ctrl-D quits.
"""

from __future__ import annotations

import re
import time

from prompt_toolkit import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl

from edge_rnn.runtime import Session

PARTIAL_WORD = re.compile(r"[A-Za-z]*$")  # what accepting a suggestion replaces


class Editor:
    """The session behind the line, the suggestions on show and the last keystroke's latency."""

    def __init__(self, session: Session, k: int = 3):
        self.session, self.k = session, k
        self.text, self.shown, self.latency_ms = "", [], None

    def on_change(self, buffer: Buffer) -> None:
        start = time.perf_counter()
        self.session.edit(self.text, buffer.text)
        self.shown = self.session.suggestions(self.k)
        self.latency_ms = 1e3 * (time.perf_counter() - start)
        self.text = buffer.text

    def accept(self, buffer: Buffer, slot: int) -> None:
        """Replace the partly typed word with suggestion ``slot`` and a space."""
        if slot >= len(self.shown):
            return
        word = self.shown[slot][0]
        head = PARTIAL_WORD.sub("", buffer.text)
        text = head + word + " "
        buffer.document = Document(text, len(text))  # fires on_change: the session follows

    def status(self) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        for n, (word, prob) in enumerate(self.shown, 1):
            parts += [("bold", f" {n} "), ("", f"{word} "), ("ansigreen", "█" * round(8 * prob) or "▏"),
                      ("", f" {100 * prob:4.1f}%   ")]
        if not self.shown:
            parts.append(("italic", " type to see suggestions"))
        latency = "" if self.latency_ms is None else f"last keystroke {self.latency_ms:.2f} ms · "
        parts.append(("ansibrightblack", f"\n {latency}Tab/1-3 accept · Backspace · Ctrl-D quit"))
        return parts


def run(session: Session, k: int = 3) -> None:
    """Run the editor until Ctrl-C / Ctrl-D."""
    editor = Editor(session, k)
    buffer = Buffer(multiline=False, on_text_changed=editor.on_change)
    keys = KeyBindings()

    @keys.add("c-c")
    @keys.add("c-d")
    def _quit(event):
        event.app.exit()

    @keys.add("tab")
    def _first(event):
        editor.accept(buffer, 0)

    for slot in range(min(k, 9)):
        keys.add(str(slot + 1))(lambda event, slot=slot: editor.accept(buffer, slot))

    layout = Layout(HSplit([
        Window(FormattedTextControl("edge-rnn: type; suggestions update on every key"), height=1,
               style="class:title"),
        Window(BufferControl(buffer=buffer), height=1),
        Window(FormattedTextControl(editor.status), height=2),
    ]))
    Application(layout=layout, key_bindings=keys, full_screen=False).run()

"""``edge-rnn complete RUN`` with no text, driven like a person would: in a pseudo-terminal.

pexpect runs the real command line in a pty; pyte (a terminal emulator) turns what it draws into
the screen a person sees; the suggestions read off that screen must be the Python runtime's.
"""

import sys
import time

import pexpect
import pyte

from edge_rnn.runtime import open_session

ROWS, COLS = 12, 110


class Terminal:
    """The command in a pty, and the screen it has drawn so far."""

    def __init__(self, *args: str):
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.child = pexpect.spawn(sys.executable, ["-c", "from cli.main import main; main()", *args],
                                   dimensions=(ROWS, COLS), encoding="utf-8", timeout=60)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                pass
            if predicate(self.text()):
                return self.text()
        raise AssertionError(f"screen never matched; it shows:\n{self.text()}")

    def send(self, keys: str) -> None:
        for key in keys:  # one key at a time, as typed
            self.child.send(key)
            time.sleep(0.02)


def suggestion_line(words) -> callable:
    """The screen shows these words, numbered, in this order, on one line."""
    def shown(screen: str) -> bool:
        return any(all(f"{n} {w} " in line for n, w in enumerate(words, 1)) for line in screen.splitlines())
    return shown


def test_type_backspace_accept_and_quit_in_a_terminal(trained):
    run, _ = trained
    session = open_session(run)
    typed = "the capital of fr"
    want = [w for w, _ in session.complete(typed, 3)]
    shorter = [w for w, _ in session.complete(typed[:-2], 3)]

    term = Terminal("complete", str(run))
    term.wait_for(lambda s: "type to see suggestions" in s)
    term.send(typed)
    screen = term.wait_for(suggestion_line(want))
    assert typed in screen and "last keystroke" in screen and " ms" in screen

    term.send("\x7f\x7f")  # Backspace twice: back through the state stack
    term.wait_for(suggestion_line(shorter))

    term.send("fr\t")  # Tab accepts the first suggestion: the word and a space replace "fr"
    screen = term.wait_for(lambda s: f"the capital of {want[0]} " in s)
    after = [w for w, _ in session.complete(f"the capital of {want[0]} ", 3)]
    term.wait_for(suggestion_line(after))

    term.send("\x04")  # Ctrl-D
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0
    assert "Traceback" not in term.text()


def test_digit_accepts_that_suggestion_and_ctrl_c_quits_cleanly(trained):
    run, _ = trained
    session = open_session(run)
    second = session.complete("the capital of ", 3)[1][0]
    term = Terminal("complete", str(run), "--top-k", "3")
    term.wait_for(lambda s: "type to see suggestions" in s)
    term.send("the capital of ")
    term.wait_for(lambda s: f"2 {second} " in s)
    term.send("2")
    term.wait_for(lambda s: f"the capital of {second} " in s)
    term.send("\x03")  # Ctrl-C
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0


def test_without_a_terminal_it_asks_for_text(trained):
    import subprocess

    run, _ = trained
    result = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "complete", str(run)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "stdin is not a terminal" in result.stderr

"""`pandaserve chat` against the real server, as a person or a script runs it: one-shot (its output
and exit status), interactive under a pseudo-terminal (the status line seen, two turns, /history,
/new), and interactive with stdin piped."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import Client
from service.client.progress import size
from tests.conftest import API_KEY, REPO
from tests.media import picture

pytestmark = pytest.mark.e2e

QUESTION = "What is in this image?"
GREEDY = ["--temperature", "0", "--max-tokens", "12"]


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server, API_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "shapes.png"
    path.write_bytes(picture(8, (128, 96)))
    return path


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PANDASERVE_API_KEY": API_KEY, "TERM": "dumb"} | extra


def chat(*args: str, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pandaserve", "chat", *args]
    return subprocess.run(cmd, cwd=REPO, env=env(**extra), input=stdin, capture_output=True, text=True, timeout=120)


def test_one_shot_prints_the_reply(server: str, client: Client, photo: Path) -> None:
    expected = client.chat(QUESTION, [photo], temperature=0, max_tokens=12)
    done = chat("--url", server, "-m", QUESTION, *GREEDY, str(photo))  # the key from PANDASERVE_API_KEY
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.reply + "\n"
    assert re.search(r"\[session sess_[0-9a-f]{32}\]", done.stderr)
    assert "uploading" not in done.stderr and "waiting" not in done.stderr  # no status line off a terminal


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["CORRUPT"], 1, "pandaserve chat: HTTP 422 invalid_media_error: image[0]: "),
        (["--session", "sess_" + "0" * 32], 1, "HTTP 404 not_found_error: "),
        (["--api-key", "wrong", "PHOTO"], 1, "HTTP 401 authentication_error: invalid API key"),
        (["--model", "gpt-9", "PHOTO"], 2, "the server does not serve 'gpt-9'"),
        (["missing.png"], 2, "missing.png: No such file or directory"),
        (["--", "data.npy"], 2, "data.npy: cannot tell the modality"),
    ],
)
def test_one_shot_fails_with_the_servers_message(
    server: str, photo: Path, tmp_path: Path, args: list[str], status: int, words: str
) -> None:
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(picture(1, (300, 300))[:300])
    (tmp_path / "data.npy").write_bytes(b"\x93NUMPY")
    args = [{"CORRUPT": str(corrupt), "PHOTO": str(photo)}.get(a, a) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "pandaserve", "chat", "--url", server, "-m", QUESTION, *args],
        cwd=tmp_path,
        env=env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == status and words in done.stderr, (done.returncode, done.stderr)
    assert done.stdout == ""


class Terminal:
    """A process on a pseudo-terminal (what a person's terminal is): lines typed, output awaited."""

    def __init__(self, args: list[str], environ: dict[str, str]) -> None:
        master, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # wide: no wrapped status line
        self.proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, cwd=REPO, env=environ)
        os.close(child)
        self.master, self.output, self.seen = master, "", 0

    def expect(self, text: str, timeout: float = 90) -> str:
        """The output from the last match to the end of `text`, once it has appeared."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.seen :]:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            try:
                data = os.read(self.master, 4096) if ready else b""
            except OSError:  # EIO: the process closed the terminal
                data = b""
            if not data:
                raise AssertionError(f"{text!r} not seen; the terminal shows:\n{self.output[-3000:]}")
            self.output += data.decode(errors="replace")
        end = self.output.index(text, self.seen) + len(text)
        shown, self.seen = self.output[self.seen : end], end
        return shown

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_interactive_on_a_terminal(server: str, client: Client, photo: Path) -> None:
    expected = client.chat(QUESTION, [photo], temperature=0, max_tokens=12).reply
    term = Terminal([sys.executable, "-m", "pandaserve", "chat", "--url", server, *GREEDY], env())
    try:
        term.expect("/help for the commands")
        term.expect("> ")
        term.type(f"/attach {photo}")
        term.expect("[attached shapes.png as image")
        term.type(QUESTION)
        shown = term.expect("[session sess_")
        # The status line: the upload's bar at 100%, then the wait for the first token; then the reply.
        assert "uploaded [########################] 100%" in shown and "waiting for the first token" in shown
        assert expected in shown
        session_id = "sess_" + term.expect("]")[:-1]
        term.expect("> ")

        term.type("And the colour?")
        term.expect("> ")
        turns = client.get_session(session_id).turns
        assert [t.message for t in turns] == [QUESTION, "And the colour?"]
        assert turns[1].reply in term.output.split("And the colour?")[-1]

        term.type("/history")
        shown = term.expect("> ")
        assert f"1. you: {QUESTION}  (image" in shown and f"panda: {turns[0].reply}" in shown
        assert "2. you: And the colour?" in shown

        term.type("/new")
        term.expect("[new session")
        term.type("/history")
        term.expect("[no session yet")
        term.type("/quit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_interactive_with_stdin_piped(server: str, client: Client, photo: Path) -> None:
    """A script drives it: no prompt and no status line, the replies and the history on stdout."""
    expected = client.chat(QUESTION, [photo], temperature=0, max_tokens=12).reply
    lines = [f"/attach {photo} image", QUESTION, "/history", "/new", "/history", "/attach nowhere.png", "/quit"]
    done = chat("--url", server, *GREEDY, stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [expected, f"1. you: {QUESTION}  (image {size(photo.stat().st_size)})",
                                        f"   panda: {expected}"]  # fmt: skip
    assert "[no session yet" in done.stderr and "nowhere.png: No such file or directory" in done.stderr

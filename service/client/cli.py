"""`pandaserve chat`: a terminal client on service.client.

    pandaserve chat --url U                          # interactive: /attach FILE [MODALITY], /new, /history, /quit
    pandaserve chat --url U -m "What is this?" photo.jpg   # one question: the reply on stdout

Replies stream to stdout; everything else (the status line, session ids, errors) goes to stderr, so
one-shot output can be piped. Exit status: 0, 1 when the server (or the connection) failed the
request (its message on stderr), 2 for a usage error (a missing file, an unknown modality).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from service.client.errors import PandaServeError
from service.client.files import MODALITIES, Attachment
from service.client.progress import Progress, size
from service.client.sync import DEFAULT_URL, Client
from service.client.types import ChatReply, Session

HELP = """commands:
  /attach FILE [MODALITY]  send FILE with the next message (modality from the extension unless named)
  /detach                  drop the files attached and not yet sent
  /new                     start a new session with the next message
  /history                 the session's turns, as the server keeps them
  /quit                    leave (so does end-of-file)"""


class UsageError(Exception):
    """The user's input is wrong before any request (exit status 2)."""


def add_command(commands: Any) -> None:
    c = commands.add_parser(
        "chat",
        help="talk to a PandaServe server (interactive, or one question with -m)",
        description="Chat with a PandaServe server. Without -m: interactive (/help lists the commands).",
    )
    c.add_argument("--url", help=f"the server (or PANDASERVE_URL; default {DEFAULT_URL})")
    c.add_argument("--api-key", help="the API key (or PANDASERVE_API_KEY)")
    c.add_argument("--model", help="the model to talk to; refused unless the server serves it (GET /v1/models)")
    c.add_argument("--session", help="continue this session (sess_...) instead of starting one")
    c.add_argument("-m", "--message", help="ask this one question, print the reply and exit")
    c.add_argument(
        "files", nargs="*", metavar="FILE", help="files sent with the first message; MODALITY=FILE names the field"
    )
    c.add_argument("--max-tokens", type=int)
    c.add_argument("--temperature", type=float)
    c.add_argument("--top-p", type=float)
    c.add_argument("--top-k", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="the upload and first-token status line on stderr (auto: when stderr is a terminal)",
    )
    c.set_defaults(run=main)


def file_argument(arg: str) -> Attachment:
    """FILE, or MODALITY=FILE (as curl's -F image=@FILE) when FILE's extension does not say it."""
    modality, eq, path = arg.partition("=")
    if not (eq and modality in MODALITIES and not Path(arg).exists()):
        modality, path = "", arg
    return open_attachment(path, modality or None)


def open_attachment(path: str, modality: str | None) -> Attachment:
    try:
        return Attachment.open(path, modality)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@dataclass
class Chat:
    """One conversation at the terminal: the session it continues and the files for the next turn."""

    client: Client
    sampling: dict[str, Any]
    progress: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    session: str | None = None
    pending: list[Attachment] = field(default_factory=list)

    def turn(self, message: str) -> ChatReply:
        """Send the message and the pending files; stream the reply to `out`. The files are dropped
        only once the turn succeeded, so a refused turn can be sent again as it was."""
        with Progress(self.err, self.progress) as bar:
            stream = self.client.chat(
                message, self.pending, session=self.session, stream=True, on_upload=bar.upload, **self.sampling
            )
            printed = False
            try:
                with stream:
                    for delta in stream:
                        if not printed:
                            bar.clear()
                            printed = True
                        self.out.write(delta.text)
                        self.out.flush()
                    reply = stream.reply
            except BaseException:
                if printed:  # the line the reply had begun is ended before the error is shown
                    self.out.write("\n")
                    self.out.flush()
                raise
        self.out.write("\n")
        self.out.flush()
        if reply.session_id != self.session:
            self.note(f"session {reply.session_id}")
        self.session, self.pending = reply.session_id, []
        return reply

    def note(self, text: str) -> None:
        self.err.write(f"[{text}]\n")
        self.err.flush()

    def command(self, line: str) -> bool:
        """Run one /command; False when it asks to leave."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        name, args = words[0], words[1:]
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/attach":
            if not 1 <= len(args) <= 2:
                raise UsageError("usage: /attach FILE [MODALITY]")
            file = open_attachment(args[0], args[1] if len(args) == 2 else None)
            self.pending.append(file)
            self.note(f"attached {file.name} as {file.modality} ({size(len(file.data))})")
        elif name == "/detach":
            self.note(f"dropped {len(self.pending)} file(s)")
            self.pending = []
        elif name == "/new":
            self.session = None
            self.note("new session: the next message starts it")
        elif name == "/history":
            self.history()
        elif name == "/help":
            self.err.write(HELP + "\n")
        else:
            raise UsageError(f"unknown command {name} (/help lists them)")
        return True

    def history(self) -> None:
        if self.session is None:
            self.note("no session yet: the next message starts one")
            return
        self.print_session(self.client.get_session(self.session))

    def print_session(self, session: Session) -> None:
        self.note(f"session {session.session_id}, {len(session.turns)} turn(s)")
        for i, t in enumerate(session.turns, 1):
            media = ", ".join(f"{m.modality} {size(m.bytes)}" for m in t.media)
            self.out.write(f"{i}. you: {t.message}" + (f"  ({media})" if media else "") + "\n")
            self.out.write(f"   panda: {t.reply}\n")
        self.out.flush()

    def interact(self) -> None:
        """Read lines from stdin until /quit or its end: /commands, or messages to send."""
        tty = sys.stdin.isatty()
        if tty:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        self.err.write("/help for the commands; /attach FILE to send a file with the next message\n")
        while True:
            try:
                line = input("> " if tty else "").strip()
            except EOFError:
                break
            if not line:
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if not self.command(line):
                        break
                    continue
                self.turn(line.removeprefix("/"))  # "//text" sends "/text"
            except UsageError as exc:
                self.err.write(f"{exc}\n")
            except PandaServeError as exc:
                self.err.write(f"error: {exc}\n")
                if self.pending:
                    self.note(f"{len(self.pending)} file(s) still attached: /detach drops them")
            except KeyboardInterrupt:
                self.err.write("\n[interrupted: the turn was abandoned]\n")


def main(args: argparse.Namespace) -> None:
    try:
        sys.exit(run(args))
    except UsageError as exc:
        print(f"pandaserve chat: {exc}", file=sys.stderr)
        sys.exit(2)
    except PandaServeError as exc:
        print(f"pandaserve chat: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("PANDASERVE_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("PANDASERVE_API_KEY") or None
    files = [file_argument(f) for f in args.files]
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    sampling |= {"top_k": args.top_k, "seed": args.seed}
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    with Client(url, api_key) as client:
        chat = Chat(client, sampling, progress, session=args.session, pending=files)
        if args.model is not None or args.message is None:
            served = [m.id for m in client.models()]  # also checks the URL and the key before any typing
            if args.model is not None and args.model not in served:
                raise UsageError(f"the server does not serve {args.model!r} (it serves: {', '.join(served)})")
            if args.message is None:
                chat.note(f"{url}, model {args.model or ', '.join(served)}")
        if args.message is not None:
            chat.turn(args.message)
        else:
            chat.interact()
    return 0

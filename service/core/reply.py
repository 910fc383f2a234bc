"""The reply as it streams: which tokens are final (the family's stop rule), what text they make
(decoded incrementally), and where a requested stop string cuts it. Pure: no engine, no I/O.

Each piece holds back just enough to never show what a later token could still take away: the stop
rule its `holdback` newest tokens (PandaGPT: the "\\n" that a following `##` drops), the decoder an
incomplete UTF-8 character, the stop strings the characters that could begin one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import sentencepiece as spm

from service.families.base import StopRule

REPLACEMENT = "\ufffd"  # what a decode of an incomplete UTF-8 byte sequence ends with
T = TypeVar("T")


@dataclass
class StopScanner(Generic[T]):
    """Tokens (each with what travels with it, e.g. its logprob) under a family's stop rule."""

    rule: StopRule
    kept: list[tuple[int, T]] = field(default_factory=list)
    released: int = 0
    stopped: bool = False

    def push(self, token: int, extra: T) -> bool:
        """Add a generated token; True when it ended the reply (the stop's tokens are then dropped)."""
        self.kept.append((token, extra))
        for stop in self.rule.sequences:
            n = len(stop.tokens)
            if len(self.kept) >= n and tuple(t for t, _ in self.kept[-n:]) == stop.tokens:
                del self.kept[max(len(self.kept) - n - stop.drop_before, 0) :]
                self.stopped = True
                return True
        return False

    def release(self) -> list[tuple[int, T]]:
        """The tokens that are final now: all of them once stopped, else all but the held-back newest."""
        end = len(self.kept) if self.stopped else max(len(self.kept) - self.rule.holdback, self.released)
        out = self.kept[self.released : end]
        self.released = end
        return out

    def finish(self) -> list[tuple[int, T]]:
        """The reply ended (stopped, or by length): whatever was held back is final."""
        self.stopped = True
        return self.release()


class ReplyDecoder:
    """SentencePiece decoding, one delta at a time, equal to decoding the whole reply at once.

    Each step decodes only a window: the tokens of the previous step plus the new ones, and returns
    what the new ones add (a window's decode drops the leading space of its first piece, as the
    whole decode does, so only the difference is used). Text ending in an incomplete UTF-8
    character waits for the next token.
    """

    def __init__(self, tokenizer: spm.SentencePieceProcessor) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # where the window begins
        self.shown = 0  # tokens whose text is out

    def push(self, token_ids: Sequence[int]) -> str:
        self.ids += token_ids
        return self._step(final=False)

    def finish(self) -> str:
        """What is left, incomplete characters included (as the whole decode shows them)."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        if self.shown == len(self.ids):
            return ""
        before = self.tokenizer.decode(self.ids[self.start : self.shown])
        after = self.tokenizer.decode(self.ids[self.start :])
        if not final and (after.endswith(REPLACEMENT) or not after.startswith(before)):
            return ""
        self.start, self.shown = self.shown, len(self.ids)
        return after[len(before) :]


class StopStrings:
    """Requested stop strings (OpenAI's `stop`): the text up to the first one, released as it becomes
    certain not to be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) - 1 for s in self.stops), default=0)
        self.text = ""
        self.sent = 0
        self.hit = False

    def push(self, text: str) -> str:
        """Text that is final now; `hit` turns True when a stop string appeared (nothing after it is shown)."""
        if self.hit:
            return ""
        searched_from = max(len(self.text) - self.hold, 0)
        self.text += text
        found = [i for i in (self.text.find(s, searched_from) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            self.text = self.text[: min(found)]
            return self._release(len(self.text))
        return self._release(len(self.text) - self.hold)

    def finish(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out = self.text[self.sent : end]
        self.sent = end
        return out

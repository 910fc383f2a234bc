"""The reply as it streams: which tokens are final (the family's stop rule), what text they make
(decoded incrementally), and where a requested stop string cuts it. Pure: no engine, no I/O.

Each piece holds back just enough to never show what a later token could still take away: the stop
rule its `holdback` newest tokens (PandaGPT: the "\\n" that a following `##` drops), the decoder an
incomplete UTF-8 character, the stop strings the characters that could begin one. `Reply` puts the
three together: the engine's tokens in, the deltas a client may see out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import sentencepiece as spm

from service.engines.base import TokenLogprob
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
        out = self.kept[self.released :]
        self.released = len(self.kept)
        return out


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


@dataclass(frozen=True)
class TextDelta:
    """Text that is final, with the tokens released since the last delta (and their logprobs)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


class Reply:
    """The reply being generated: the engine's tokens in, what a client may see out."""

    def __init__(
        self, rule: StopRule, tokenizer: spm.SentencePieceProcessor, stops: Sequence[str], logprobs: bool
    ) -> None:
        self.tokens: StopScanner[TokenLogprob | None] = StopScanner(rule)
        self.decoder = ReplyDecoder(tokenizer)
        self.stops = StopStrings(stops)
        self.with_logprobs = logprobs
        self.ids: list[int] = []  # the reply's tokens, as final
        self.logprobs: list[TokenLogprob] = []
        self.generated = 0  # every token the engine gave, the dropped ones too
        self._unsent = 0  # of `ids`, how many no delta carried yet

    @property
    def stopped(self) -> bool:
        """By the family's stop rule or a stop string: the engine's request can end."""
        return self.tokens.stopped or self.stops.hit

    @property
    def text(self) -> str:
        return self.stops.text

    def push(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob] | None) -> TextDelta | None:
        """The engine's next tokens; a delta when they made some text final."""
        extras: Sequence[TokenLogprob | None] = logprobs or [None] * len(token_ids)
        for token, extra in zip(token_ids, extras, strict=True):
            self.generated += 1
            if self.tokens.push(token, extra):
                return None  # what is left comes out of `finish`
        text = self._take(self.tokens.release())
        return self._delta(text) if text else None

    def finish(self) -> TextDelta | None:
        """The reply ended: what was held back is final (unless a stop string cut it off)."""
        text = "" if self.stops.hit else self._take(self.tokens.finish())
        text += self.stops.push(self.decoder.finish()) + self.stops.finish()
        return self._delta(text) if text or self._unsent else None

    def _take(self, released: list[tuple[int, TokenLogprob | None]]) -> str:
        self.ids += [t for t, _ in released]
        self.logprobs += [lp for _, lp in released if lp is not None]
        self._unsent += len(released)
        return self.stops.push(self.decoder.push([t for t, _ in released]))

    def _delta(self, text: str) -> TextDelta:
        new = slice(len(self.ids) - self._unsent, len(self.ids))
        self._unsent = 0
        return TextDelta(text, self.ids[new], self.logprobs[new] if self.with_logprobs else None)

"""The workload: conversations drawn from workload.json's weighted request kinds, with generated media.

Conversation `i` depends only on (workload seed, i): every run draws a prefix of the same
sequence, so the original path, the direct engine and each service run see the same mix. The
bytes of its files depend on `nonce` too: a run with a fresh nonce uploads files no earlier run
sent (a cold embedding cache); replaying the same `Conversation` objects sends the same bytes
again (warm).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import media

DEFAULT_WORKLOAD = Path(__file__).with_name("workload.json")
MEDIA_PER_CONVERSATION = 16  # media seeds reserved per conversation: seeds never collide across conversations


@dataclass(frozen=True)
class Media:
    modality: str
    data: bytes


@dataclass(frozen=True)
class Turn:
    message: str
    media: tuple[Media, ...]
    max_tokens: int


@dataclass(frozen=True)
class Conversation:
    kind: str
    turns: tuple[Turn, ...]

    @property
    def modalities(self) -> list[str]:
        return [m.modality for t in self.turns for m in t.media]


@dataclass(frozen=True)
class Workload:
    seed: int
    kinds: list[dict[str, Any]]
    max_tokens: dict[int, float]
    messages: list[str]
    followups: list[str]

    @classmethod
    def load(cls, path: Path = DEFAULT_WORKLOAD) -> Workload:
        raw = json.loads(path.read_text())
        kinds = raw["kinds"]
        for kind in kinds:
            unknown = {m for turn in kind["turns"] for m in turn} - set(media.GENERATORS)
            if unknown or not kind["turns"] or not kind["turns"][0]:
                raise ValueError(f"{path}: kind {kind['name']!r}: unknown modalities {unknown} or no media first")
        return cls(
            seed=raw["seed"],
            kinds=kinds,
            max_tokens={int(k): float(v) for k, v in raw["max_tokens"].items()},
            messages=raw["messages"],
            followups=raw["followups"],
        )

    def conversation(self, index: int, nonce: int) -> Conversation:
        """Conversation `index` of the sequence, its files generated with `nonce`."""
        rng = random.Random(f"{self.seed}/{index}")  # str seeds are hashed deterministically (sha512)
        kind = rng.choices(self.kinds, weights=[k["weight"] for k in self.kinds])[0]
        lengths, weights = list(self.max_tokens), list(self.max_tokens.values())
        turns, seed = [], index * MEDIA_PER_CONVERSATION
        for t, modalities in enumerate(kind["turns"]):
            files = []
            for modality in modalities:
                files.append(Media(modality, media.make(modality, seed, nonce)))
                seed += 1
            message = rng.choice(self.messages if t == 0 else self.followups)
            turns.append(Turn(message, tuple(files), rng.choices(lengths, weights)[0]))
        return Conversation(kind["name"], tuple(turns))

    def conversations(self, start: int, count: int, nonce: int) -> list[Conversation]:
        return [self.conversation(i, nonce) for i in range(start, start + count)]


def single(
    modality: str, count: int, nonce: int, max_tokens: int, message: str = "What is in this?"
) -> list[Conversation]:
    """`count` one-turn conversations of one file of `modality` each (the cached-vs-cold pair)."""
    files = [Media(modality, media.make(modality, 10_000 + i, nonce)) for i in range(count)]
    return [Conversation(modality, (Turn(message, (f,), max_tokens),)) for f in files]

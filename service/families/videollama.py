"""Video-LLaMA's rules, exact to its released demo code (the facts: README, "Fidelity to Video-LLaMA").

Each upload adds its placeholder message to the user message of the turn that sent it; the question
joins that message after a single space (the demo's `Chat.ask`). The conversation is rendered by
the template (Vicuna v0's `###` or LLaMA-2 chat's `[INST]`), split at each `<ImageHere>`, and each
text segment is tokenized on its own with SentencePiece; BOS (id 1) leads the first segment only.
The placeholder never becomes an id: a slot of the medium's vectors stands in its place. The
template's own `</s><s>` between LLaMA-2 turns are the ids EOS and BOS, as the original's slow
tokenizer made them; user text is always literal.

Differences from the demo, each chosen (README): several media per conversation, each with its own
placeholder in the turn it came with (the demo allowed one upload); an audio file on its own, with
the audio sentence of the audio-video message; history trimmed from the oldest media-free exchange
to fit the context, where the demo cut the prompt's embeddings from the left (dropping BOS and media).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sentencepiece as spm
import torch

from encoders.videollama import preprocess
from service.families.base import Exchange, GenerationDefaults, LoraSpec, Medium, Segment, StopRule, StopSequence

NAME = "videollama"
Template = Literal["vicuna", "llama2"]
# The order a /chat turn's uploads take (the form's fields carry no order between them).
MODALITY_ORDER = preprocess.MODALITIES
# `Chat.answer`: sampling always on, top_p 0.9, temperature 1.0, 300 new tokens; HF's hidden top_k 50.
GENERATION = GenerationDefaults(max_tokens=300, temperature=1.0, top_p=0.9, top_k=50)

PLACEHOLDER = "<ImageHere>"
# The system prompt the demos set when an image (or, in demo_video.py, a video) is uploaded.
VISUAL_SYSTEM = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)
IMAGE_MESSAGE = "<Image><ImageHere></Image> "
VIDEO_MESSAGE = "<Video><ImageHere></Video> "
AUDIO_SENTENCE = "Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>."
# The runs of spaces are the original literal's backslash line continuations.
AUDIO_VIDEO_MESSAGE = (
    AUDIO_SENTENCE
    + " " * 17
    + "Close your ears, open your eyes and you see that <Video><ImageHere></Video>."
    + " " * 18
    + "Now answer my question based on what you have just seen and heard."
)
VICUNA_ROLES = ("Human", "Assistant")


def clean_reply(text: str, template: Template) -> str:
    """`Chat.answer`'s post-processing: the text before a separator, after the last role name, stripped."""
    separator, role = ("###", "Assistant:") if template == "vicuna" else ("</s>", "ASSISTANT:")
    return text.split(separator)[0].split(role)[-1].strip()


@dataclass(frozen=True)
class Slot:
    """Where a medium's vectors go, in place of a placeholder."""

    vectors: torch.Tensor


@dataclass(frozen=True)
class Special:
    """A control token the template writes (LLaMA-2's `</s><s>` between turns): an id, never text."""

    id: int


Part = str | Slot | Special


def medium_parts(medium: Medium) -> list[Part]:
    """A medium's placeholder message, its slots in place of `<ImageHere>`."""
    if medium.modality == "image":
        text, slots = IMAGE_MESSAGE, [medium.soft_prompt]
    elif medium.modality == "video" and medium.audio_track is not None:
        # Audio first, as the placeholders read (the order fixed upstream on 2023-08-24); no timestamps.
        text, slots = AUDIO_VIDEO_MESSAGE, [medium.audio_track, medium.soft_prompt]
    elif medium.modality == "video":
        if not medium.timestamps:  # the prompt would lie about the frames: refuse rather than invent it
            raise ValueError("a Video-LLaMA video needs its timestamp sentence (Medium.timestamps)")
        text, slots = VIDEO_MESSAGE + medium.timestamps, [medium.soft_prompt]
    elif medium.modality == "audio":
        text, slots = AUDIO_SENTENCE, [medium.soft_prompt]
    else:
        raise ValueError(f"Video-LLaMA takes {', '.join(MODALITY_ORDER)}, not {medium.modality}")
    pieces = text.split(PLACEHOLDER)
    parts: list[Part] = [pieces[0]]
    for vectors, piece in zip(slots, pieces[1:], strict=True):
        parts += [Slot(vectors), piece]
    return parts


def user_message(media: Sequence[Medium], question: str) -> list[Part]:
    """A turn's user message: each upload's message, then the question, joined by single spaces."""
    parts: list[Part] = []
    for medium in media:
        parts += [*([" "] if parts else []), *medium_parts(medium)]
    return [*parts, *([" "] if parts else []), question]


def system_prompt(first: Medium, audio_branch: bool) -> str:
    """The one the conversation's first upload set. A video's is demo_audiovideo.py's ("") for a
    bundle with the audio branch, demo_video.py's otherwise; audio alone is ours, like a video's track."""
    if first.modality == "image" or (first.modality == "video" and not audio_branch):
        return VISUAL_SYSTEM
    return ""


def is_empty(message: Sequence[Part]) -> bool:
    """The templates skip an empty message (`if message:`), e.g. a reply that was only whitespace."""
    return all(isinstance(p, str) for p in message) and not "".join(p for p in message if isinstance(p, str))


def vicuna_conversation(system: str, messages: Sequence[list[Part]]) -> list[Part]:
    """SeparatorStyle.SINGLE: system + "###", then "Role: message###" each, the open turn "Assistant:"
    (as is an empty message: "Role:", with no separator)."""
    parts: list[Part] = [system + "###"]
    for i, message in enumerate(messages):
        role = VICUNA_ROLES[i % 2]
        parts += [role + ":"] if is_empty(message) else [role + ": ", *message, "###"]
    return [*parts, VICUNA_ROLES[1] + ":"]


def llama2_conversation(system: str, messages: Sequence[list[Part]], bos: int, eos: int) -> list[Part]:
    """SeparatorStyle.LLAMA_2: "[INST] <<SYS>>...<</SYS>>\\n\\n{first} [/INST]", each reply " {reply} </s>",
    each later question "<s>[INST] {q} [/INST]". The leading "<s>" is stripped (BOS comes first anyway)."""
    parts: list[Part] = []
    for i, message in enumerate(messages):
        if is_empty(message):
            continue
        if i == 0:
            parts += ["[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n", *message, " [/INST]"]
        elif i % 2 == 0:
            parts += [Special(bos), "[INST] ", *message, " [/INST]"]
        else:
            parts += [" ", *message, " ", Special(eos)]
    return parts


def segments(parts: Sequence[Part], tokenizer: spm.SentencePieceProcessor) -> list[Segment]:
    """Token ids between the slots: BOS, then each run of text between slots or control tokens
    tokenized on its own (as the original's slow tokenizer split the text at special tokens)."""
    out: list[Segment] = []
    ids, text = [tokenizer.bos_id()], ""
    for part in parts:
        if isinstance(part, str):
            text += part
            continue
        ids += tokenizer.encode(text)
        text = ""
        if isinstance(part, Special):
            ids.append(part.id)
        else:
            out += [ids, part.vectors]
            ids = []
    return [*out, ids + tokenizer.encode(text)]


def prompt_length(prompt: Sequence[Segment]) -> int:
    return sum(len(segment) for segment in prompt)


class VideoLlama:
    name = NAME
    lora: LoraSpec | None = None  # the LLM is stock Vicuna v0 or LLaMA-2-chat
    generation = GENERATION
    modality_order: tuple[str, ...] = MODALITY_ORDER

    def __init__(self, tokenizer: spm.SentencePieceProcessor, template: Template, audio_branch: bool) -> None:
        """`audio_branch`: whether the bundle serves audio (it has the AL branch), as demo_audiovideo.py did."""
        self.tokenizer = tokenizer
        self.template: Template = template
        self.audio_branch = audio_branch
        self.stop_rule = StopRule(self._stops())

    @classmethod
    def load(cls, tokenizer_path: Path, template: Template, audio_branch: bool) -> VideoLlama:
        return cls(spm.SentencePieceProcessor(model_file=str(tokenizer_path)), template, audio_branch)

    def _stops(self) -> tuple[StopSequence, ...]:
        """Vicuna: "###", one piece after a space (835 in LLaMA) or `##` + `#` after text (2277, 29937),
        dropped; EOS too (HF's generate stopped there). LLaMA-2: EOS. Each stop drops only itself."""
        eos = StopSequence((self.tokenizer.eos_id(),))
        if self.template == "llama2":
            return (eos,)
        pieces = {p: self.tokenizer.piece_to_id(p) for p in ("▁###", "##", "#")}
        missing = [p for p, i in pieces.items() if i == self.tokenizer.unk_id()]
        if missing:
            raise ValueError(f"the tokenizer lacks the pieces {missing} of Video-LLaMA's stop rule")
        return StopSequence((pieces["▁###"],)), StopSequence((pieces["##"], pieces["#"])), eos

    def prompt(
        self, history: Sequence[Exchange], message: str, media: Sequence[Medium], budget: int | None = None
    ) -> list[Segment]:
        """The whole conversation; over `budget`, the oldest exchanges that carried no media are left
        out one by one until it fits (never BOS, a medium, or the turn being asked)."""
        kept = list(range(len(history)))
        prompt = self._render(history, kept, message, media)
        sent_media = {m.turn for m in media}
        while budget is not None and prompt_length(prompt) > budget:
            droppable = [i for i in kept if i not in sent_media]
            if not droppable:
                break  # the chat core refuses a prompt over the context
            kept.remove(droppable[0])
            prompt = self._render(history, kept, message, media)
        return prompt

    def _render(
        self, history: Sequence[Exchange], kept: Sequence[int], message: str, media: Sequence[Medium]
    ) -> list[Segment]:
        if not media:
            raise ValueError("a Video-LLaMA conversation starts with a medium")  # the chat core requires one
        turns = [*kept, len(history)]
        questions = [*(history[i][0] for i in kept), message]
        messages: list[list[Part]] = []
        for turn, question in zip(turns, questions, strict=True):
            messages.append(user_message([m for m in media if m.turn == turn], question))
            if turn < len(history):
                messages.append([history[turn][1]])
        system = system_prompt(media[0], self.audio_branch)
        if self.template == "vicuna":
            parts = vicuna_conversation(system, messages)
        else:
            parts = llama2_conversation(system, messages, self.tokenizer.bos_id(), self.tokenizer.eos_id())
        return segments(parts, self.tokenizer)

    def clean_reply(self, text: str) -> str:
        return clean_reply(text, self.template)

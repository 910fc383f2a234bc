"""(a) The baseline: PandaGPT's original demo path, in this process, one request at a time.

Per turn, as the original's `generate` did: decode every file of the conversation so far and run
ImageBind on each alone (the original re-embedded its media on every turn), project and sum into
the slot, build the prompt, then HF transformers + PEFT (LoRA unmerged) `generate(inputs_embeds)`
greedy, stopping at `##` as the original's stopping criterion did. Same bundle, same workload,
same output lengths as the service runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.load import Run
from benchmarks.metrics import RequestRecord
from benchmarks.parts import Parts
from benchmarks.workload import Conversation


def load_llm(parts: Parts) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bundle = parts.bundle
    base = AutoModelForCausalLM.from_pretrained(bundle.llm_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(bundle.lora_dir)).eval() if bundle.lora_dir else base.eval()


class TokenClock:
    """A stopping criterion that never stops: HF calls it once per generated token, so it timestamps them."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def run_original(parts: Parts, llm: torch.nn.Module, conversations: list[Conversation]) -> Run:
    from transformers import StoppingCriteriaList

    eos = parts.family.tokenizer.eos_id()
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    for conversation in conversations:
        history: list[tuple[str, str]] = []
        media = [m for turn in conversation.turns for m in turn.media]
        for i, turn in enumerate(conversation.turns):
            started = time.perf_counter()
            record = RequestRecord(kind=conversation.kind, turn=i, start=started - t0)
            so_far = media[: sum(len(t.media) for t in conversation.turns[: i + 1])]
            rows = parts.media_rows([m.modality for m in so_far], [parts.embed_one(m) for m in so_far])
            prompt = parts.prompt(history, turn.message, rows)[None]
            clock = TokenClock()
            out = llm.generate(  # type: ignore[operator]
                inputs_embeds=prompt,
                attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long),
                max_new_tokens=turn.max_tokens,
                do_sample=False,
                eos_token_id=list(parts.stop_ids),
                pad_token_id=eos,
                stopping_criteria=StoppingCriteriaList([clock]),
            )[0].tolist()
            record.e2el = time.perf_counter() - started
            record.ttft = clock.times[0] - started if clock.times else record.e2el
            record.itl = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
            record.output_tokens, record.prompt_tokens, record.ok = len(out), prompt.shape[1], True
            records.append(record)
            history.append((turn.message, parts.reply_text(out)))
    return Run(records, time.perf_counter() - t0)


def warm_up(parts: Parts, llm: torch.nn.Module, conversation: Conversation) -> None:
    """One untimed request: first-call costs (allocations, kernels' lazy init) are not the path's speed."""
    run_original(parts, llm, [conversation])


def original_run(bundle: Path, conversations: list[Conversation], warm: Conversation) -> Run:
    parts = Parts.load(bundle)
    llm = load_llm(parts)
    warm_up(parts, llm, warm)
    return run_original(parts, llm, conversations)

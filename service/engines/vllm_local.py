"""vLLM's AsyncLLM in this process, fed prompt embeddings, with the bundle's LoRA.

Only this package imports vllm. Engine start takes ~20 s on CPU; the engine core runs in a
child process, so whatever starts it needs the `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Mapping, Sequence

import torch
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.logprobs import Logprob
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from service.engines.base import Delta, EngineConfig, Sampling, TokenLogprob
from service.errors import EngineFailed

# vLLM's LLaMA packs q/k/v and gate/up into one module each; its LoRA layers have those names.
VLLM_MODULE = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "o_proj": "o_proj"}
VLLM_MODULE |= {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}


def vllm_lora_modules(targets: tuple[str, ...]) -> list[str]:
    """vLLM's LoRA layers for an adapter's HF targets. Naming them is also the workaround of vLLM bug
    #51122: with LoRA + prompt embeds, a step mixing an embeds prefill with other rows kills the
    engine core when embed_tokens is LoRA-wrapped, which it is unless the layers are restricted."""
    return sorted({VLLM_MODULE[t] for t in targets})


class LocalVLLMEngine:
    def __init__(self, llm: AsyncLLM, lora: LoRARequest | None, dtype: torch.dtype) -> None:
        self.llm = llm
        self.lora = lora
        self.dtype = dtype
        self.max_model_len: int = llm.model_config.max_model_len

    @classmethod
    def start(cls, config: EngineConfig) -> LocalVLLMEngine:
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        # fp32 on CPU; fp16 on GPU as the original ran.
        dtype = torch.float16 if on_gpu else torch.float32
        lora_dir = config.lora_dir
        lora_rank = json.loads((lora_dir / "adapter_config.json").read_text())["r"] if lora_dir else None
        args = AsyncEngineArgs(
            model=str(config.model_dir),
            dtype="float16" if on_gpu else "float32",
            enable_prompt_embeds=True,
            enforce_eager=not on_gpu,
            max_model_len=config.max_model_len,  # type: ignore[arg-type]  # None: the model's own
            max_num_seqs=config.max_num_seqs,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enable_lora=lora_dir is not None,
            max_loras=1,
            max_lora_rank=lora_rank or 16,  # type: ignore[arg-type]  # vLLM validates the allowed ranks
            lora_target_modules=vllm_lora_modules(config.lora_targets) if lora_dir else None,
        )
        llm = AsyncLLM.from_engine_args(args)
        lora = LoRARequest("adapter", 1, str(lora_dir)) if lora_dir else None
        return cls(llm, lora, dtype)

    async def generate(
        self, request_id: str, prompt_embeds: torch.Tensor, sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=sampling.seed,
            stop_token_ids=list(sampling.stop_token_ids),
            logprobs=sampling.logprobs,
            detokenize=False,  # the service decodes with SentencePiece, as the original did
            output_kind=RequestOutputKind.DELTA,
        )
        finished, first = False, True
        try:
            stream = self.llm.generate(
                {"prompt_embeds": prompt_embeds.to(self.dtype)}, params, request_id, lora_request=self.lora
            )
            async for output in stream:
                completion = output.outputs[0]
                finished = output.finished
                yield Delta(
                    list(completion.token_ids),
                    completion.finish_reason if finished else None,
                    # a list of dicts (we do not ask for flat_logprobs)
                    token_logprobs(completion.token_ids, completion.logprobs)  # type: ignore[arg-type]
                    if sampling.logprobs is not None
                    else None,
                    scheduler_wait(output.metrics) if first else None,
                )
                first = False
        except EngineDeadError as exc:
            raise EngineFailed("the inference engine stopped; retry later") from exc
        finally:
            if not finished:
                await self.llm.abort(request_id)

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()


def scheduler_wait(stats: object) -> float | None:
    """Seconds the request waited in vLLM's queue before it was scheduled (its own request stats)."""
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    return scheduled - queued if queued and scheduled else None


def token_logprobs(token_ids: Sequence[int], logprobs: Sequence[Mapping[int, Logprob]] | None) -> list[TokenLogprob]:
    out = []
    for token_id, ranked in zip(token_ids, logprobs or [], strict=False):
        top = sorted(((t, lp.logprob) for t, lp in ranked.items()), key=lambda item: -item[1])
        out.append(TokenLogprob(token_id, ranked[token_id].logprob, top))
    return out

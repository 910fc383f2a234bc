"""vLLM's AsyncLLM in this process, fed prompt embeddings, with the bundle's LoRA.

Only this package imports vllm. Engine start takes ~20 s on CPU; the engine core runs in a
child process, so whatever starts it needs the `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping, Sequence

import torch
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs.llm import EmbedsPrompt
from vllm.logprobs import Logprob
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from service.engines.base import Delta, EngineConfig, Sampling, TokenLogprob
from service.engines.vllm_settings import ADAPTER, engine_settings
from service.errors import BadRequest, EngineFailed


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
        settings = engine_settings(config, on_gpu)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings))
        lora = LoRARequest(ADAPTER, 1, str(config.lora_dir)) if config.lora_dir else None
        return cls(llm, lora, getattr(torch, settings["dtype"]))

    async def generate(
        self,
        request_id: str,
        prompt_embeds: torch.Tensor,
        sampling: Sampling,
        affinity: str | None = None,
        cache_salt: str | None = None,
        adapter: bool = True,
    ) -> AsyncGenerator[Delta, None]:
        finished, first = False, True
        try:
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
            prompt: EmbedsPrompt = {"prompt_embeds": prompt_embeds.to(self.dtype)}
            if cache_salt is not None:
                prompt["cache_salt"] = cache_salt
            stream = self.llm.generate(prompt, params, request_id, lora_request=self.lora if adapter else None)
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
        except VLLMClientError as exc:  # what vLLM itself calls the request's fault: the caller's 400
            raise BadRequest(f"the inference engine refused the request: {exc}") from exc
        finally:
            if not finished:
                await self.llm.abort(request_id)

    async def check_health(self) -> None:
        await self.llm.check_health()

    async def close(self) -> None:
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

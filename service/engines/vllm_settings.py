"""One description of how vLLM serves a bundle, for both ways of running it: the in-process engine
(`AsyncEngineArgs` from these settings) and the stock OpenAI server (the same settings as its
command line, `pandaserve engine command`). Imports no vLLM: the command is printed where vLLM may
not be installed (the API's image)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from service.engines.base import EngineConfig

# The adapter's name in vLLM: requests that carry the LoRA name it as their model.
ADAPTER = "adapter"
# Requests without it, beside requests with it, run with a zero adapter of this name (vllm_local).
BARE_ADAPTER = "bare"
# vLLM's LLaMA packs q/k/v and gate/up into one module each; its LoRA layers have those names.
VLLM_MODULE = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "o_proj": "o_proj"}
VLLM_MODULE |= {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}


def vllm_lora_modules(targets: tuple[str, ...]) -> list[str]:
    """vLLM's LoRA layers for an adapter's HF targets. Naming them is also the workaround of vLLM bug
    #51122: with LoRA + prompt embeds, a step mixing an embeds prefill with other rows kills the
    engine core when embed_tokens is LoRA-wrapped, which it is unless the layers are restricted."""
    return sorted({VLLM_MODULE[t] for t in targets})


def engine_settings(config: EngineConfig, on_gpu: bool) -> dict[str, Any]:
    """`AsyncEngineArgs` fields. fp32 on CPU; fp16 on a GPU, as the original ran."""
    lora_dir = config.lora_dir
    settings: dict[str, Any] = {
        "model": str(config.model_dir),
        "dtype": "float16" if on_gpu else "float32",
        "enable_prompt_embeds": True,
        "enforce_eager": not on_gpu,  # on CPU: halves the start-up, CUDA graphs do not apply
        "max_model_len": config.max_model_len,  # None: the model's own
        "max_num_seqs": config.max_num_seqs,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enable_lora": lora_dir is not None,
    }
    if lora_dir is not None:
        rank = json.loads((lora_dir / "adapter_config.json").read_text())["r"]
        settings |= {
            "max_loras": 2 if config.bare_requests else 1,
            "max_lora_rank": rank,
            "lora_target_modules": vllm_lora_modules(config.lora_targets),
        }
    return settings


def server_command(config: EngineConfig, served_name: str, host: str, port: int, on_gpu: bool) -> str:
    """The stock vLLM OpenAI server serving the bundle as `served_name` (its LoRA as ADAPTER), one
    shell-quoted line; on CPU with the KV cache size vLLM reads from the environment."""
    args = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    for key, value in engine_settings(config, on_gpu).items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    args += ["--served-model-name", served_name, "--host", host, "--port", str(port)]
    if config.lora_dir is not None:
        args += ["--lora-modules", f"{ADAPTER}={config.lora_dir}"]
    env = [] if on_gpu else [f"VLLM_CPU_KVCACHE_SPACE={config.kv_cache_gib}"]
    return shlex.join([*env, *args])  # an assignment needs no quotes: it stays a shell prefix


def router_command(
    engine_urls: list[str], host: str, port: int, metrics_port: int, health_check_interval_s: int = 5
) -> str:
    """vllm-router (the vLLM project's router) in front of stock vLLM servers, one shell-quoted line.

    `consistent_hash` keys each request on its `x-session-id` header (the remote engine sends the
    session's id there): a session's turns reach one engine, whose prefix cache holds the
    conversation so far; adding or removing an engine moves only the sessions on its arc of the
    ring. The router's default health check runs once a minute, so an engine that died (or came
    back) would be seen a minute late: every `health_check_interval_s` instead. Its circuit breaker
    (opened by 10 failed requests) would keep a returned engine out for 60 s after its health check
    sees it back: it half-opens after the same interval instead. Its Prometheus
    metrics are served on their own port (`metrics_port`), and its default body limit (512 MiB)
    is far above a prompt's embeddings (a 13B model's 2,048 positions are 28 MB as fp16 in base64).
    """
    args = ["vllm-router", "--worker-urls", *engine_urls, "--policy", "consistent_hash"]
    args += ["--host", host, "--port", str(port), "--prometheus-host", host, "--prometheus-port", str(metrics_port)]
    args += ["--health-check-interval-secs", str(health_check_interval_s)]
    args += ["--cb-timeout-duration-secs", str(health_check_interval_s)]
    return shlex.join(args)

"""Train PandaGPT's projector and LoRA adapter with DeepSpeed, as the original did.

The config comes first, then one loop. Defaults are PandaGPT's (13B): ZeRO stage 2 with the optimizer
offloaded to CPU, fp16, AdamW lr 5e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.001,
WarmupDecayLR (log warm-up over max(10, 10% of the steps), then linear decay to 0), gradient
clipping 1.0, global batch 64, 2 epochs, max_tgt_len 400. Every field is a flag (`--max-tgt-len 1024`).

One process (CPU, or one GPU):
    pandaserve train run --data data.json --image-root images/ --base bundles/x --out runs/x
Eight GPUs (DeepSpeed's launcher starts one process per GPU):
    deepspeed --num_gpus 8 --module training.train --data ... --out runs/x
Resume after a stop or crash: the same command with --resume (from the latest checkpoint).

Run directory:
    features/                       the ImageBind feature cache (training/features.py), unless --features
    checkpoints/step-NNNNNN/        DeepSpeed's state (trainable parameters, optimizer, scheduler) and
                                    pandagpt.json + trainable.safetensors, which `pandaserve train export` reads
    checkpoints/latest              the newest tag (DeepSpeed's)
    metrics.jsonl, loss.png         per step: loss, lr, tokens/s
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.families.pandagpt import LORA


@dataclass
class TrainConfig:
    # Data (training/data.py): PandaGPT's JSON list and its image root.
    data: str = ""
    image_root: str = ""
    # Model: a bundle supplies the LLM (Vicuna) and ImageBind; or name both.
    base: str = ""
    vicuna: str = ""
    imagebind: str = ""
    init_delta: str = ""  # start from a delta pytorch_model.pt (the original's stage 2: --delta_ckpt_path)
    out: str = "runs/pandagpt"
    features: str = ""  # feature cache root; default <out>/features
    # Sequences (training/sequences.py): text tokens kept after the prefix. 400 for 13B, 1024 for 7B.
    max_tgt_len: int = 400
    # Batches: global batch = micro batch x gradient accumulation x world size.
    batch_size: int = 64
    micro_batch_size: int = 1  # per GPU: 1 for 13B, 2 for 7B on 40 GB A100s (the original's README)
    epochs: int = 2
    # Optimiser and schedule (the original's dsconfig/openllama_peft_stage_1.json).
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.001
    warmup_rate: float = 0.1
    min_warmup_steps: int = 10
    grad_clip: float = 1.0
    precision: str = "fp16"  # fp16 (the original) | bf16 | fp32; fp16 falls back to fp32 on CPU
    offload_optimizer: bool = True  # ZeRO-2's optimizer state and step on the CPU
    # LoRA on q/k/v/o of every layer.
    lora_r: int = LORA.rank
    lora_alpha: int = LORA.alpha
    lora_dropout: float = LORA.dropout
    # Run.
    seed: int = 0
    max_steps: int = 0  # stop after this optimizer step (0: the whole run); the schedule still spans the whole run
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    resume: bool = False
    decode_workers: int = 2  # processes decoding images for the feature cache
    features_only: bool = False  # fill the feature cache, then exit (run it once, on one GPU, before a multi-GPU run)
    progress: bool = True


PRECISIONS = ("fp16", "bf16", "fp32")
CHECKPOINTS = "checkpoints"
EXPORT_INFO = "pandagpt.json"
TRAINABLE = "trainable.safetensors"
log = logging.getLogger("pandaserve.train")


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_config(argv))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: --max-tgt-len, --no-offload-optimizer, ..."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            choices = PRECISIONS if f.name == "precision" else None
            parser.add_argument(flag, type=type(f.default), default=f.default, choices=choices)
    # DeepSpeed's launcher passes --local_rank to every process; the env var LOCAL_RANK says the same.
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="training.train", description=__doc__.split("\n")[0])
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))


# --- the run ---------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> None:
    import torch.distributed as dist

    try:
        _train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig) -> None:
    _single_process_defaults()
    import deepspeed
    import sentencepiece as spm
    from deepspeed.accelerator import get_accelerator

    from service.families.base import LoraSpec
    from service.families.pandagpt import prefix_ids
    from training.data import load_examples
    from training.model import PandaGPTForTraining
    from training.sequences import collate, encode_conversation

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    on_cpu = get_accelerator().device_name() == "cpu"
    precision = _precision(cfg.precision, on_cpu)
    if on_cpu and world == 1:
        # One CPU process has no peer to share memory with: skip JIT-building DeepSpeed's shared-memory
        # all-reduce op (~90 s on 2 cores). DeepSpeed reads this dict before building it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not on_cpu:
        # Each process its own GPU before any collective (a barrier on NCCL uses the current device).
        get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())

    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:  # a fresh run's curve starts empty; a resumed one continues its file
            (out / "metrics.jsonl").unlink(missing_ok=True)
    llm_dir, imagebind, imagebind_config = resolve_base(cfg)
    sp = spm.SentencePieceProcessor(model_file=str(llm_dir / "tokenizer.model"))
    examples = load_examples(cfg.data, cfg.image_root)
    encoded = [encode_conversation(sp, e.conversation) for e in examples]
    features = _features(cfg, examples, imagebind, imagebind_config, rank)
    if cfg.features_only:
        return

    micro_per_step = cfg.micro_batch_size * world
    if cfg.batch_size % micro_per_step:
        raise ValueError(
            f"batch size {cfg.batch_size} is not a multiple of micro batch x world size = {micro_per_step}"
        )
    accumulation = cfg.batch_size // micro_per_step
    total_steps = cfg.epochs * len(examples) // cfg.batch_size  # the original's count
    if total_steps < 1 or len(examples) < micro_per_step:
        raise ValueError(f"{len(examples)} examples x {cfg.epochs} epochs is less than one batch of {cfg.batch_size}")
    end = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    torch.manual_seed(cfg.seed)  # LoRA's A and the projector start from this seed
    model = PandaGPTForTraining(
        llm_dir,
        prefix_ids(sp),
        LoraSpec(LORA.targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
        feature_dim=features.shape[1],
        dtype={"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision],
    )
    if cfg.init_delta:
        _load_delta(model, Path(cfg.init_delta))
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, precision, on_cpu, accumulation, total_steps),
    )
    step = 0
    if cfg.resume:
        _, client = engine.load_checkpoint(str(out / CHECKPOINTS), load_module_strict=False)
        if client is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
        step = client["step"]
    batches = micro_batches(len(examples), cfg.micro_batch_size, world, rank, cfg.seed)
    batches = itertools.islice(batches, step * accumulation, None)  # resume where the stopped run was
    info = export_info(cfg, llm_dir, imagebind, imagebind_config)
    head = len(prefix_ids(sp)) + 1  # prefix + image vector: tokens processed besides the text

    from tqdm import tqdm

    bar = tqdm(total=end, initial=step, desc="train", disable=rank != 0 or not cfg.progress, unit="step")
    while step < end:
        started = time.perf_counter()
        lr = float(engine.get_lr()[0])  # what this step's update uses (the scheduler moves after it)
        # Dropout masks depend only on (seed, step, rank), so a resumed run draws the same ones.
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        loss_sum, tokens = 0.0, 0
        for _ in range(accumulation):
            idx = next(batches)
            text = collate([encoded[i] for i in idx], cfg.max_tgt_len, sp.eos_id())  # pad = eos (Vicuna v0)
            loss = engine(
                features[idx].to(engine.device),
                text.input_ids.to(engine.device),
                text.labels.to(engine.device),
                text.attention_mask.to(engine.device),
            )
            engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            engine.step()  # the optimizer steps at the accumulation boundary only
            loss_sum += loss.item()
            tokens += int(text.attention_mask.sum()) + head * len(idx)
        step += 1
        loss_mean, tokens = _across_ranks(loss_sum / accumulation, tokens)
        record = {"step": step, "loss": loss_mean, "lr": lr, "tokens_per_s": tokens / (time.perf_counter() - started)}
        if rank == 0:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(engine, model, out, step, info, rank)
    bar.close()
    if rank == 0:
        plot_losses(out / "metrics.jsonl", out / "loss.png")


def micro_batches(n: int, micro: int, world: int, rank: int, seed: int) -> Iterator[list[int]]:
    """This rank's micro-batches, epoch after epoch: each epoch a seeded shuffle cut into global
    micro-batches of micro x world (the last incomplete one dropped), as the original's
    DistributedBatchSampler did; rank r takes the r-th slice. Endless: the loop counts steps."""
    for epoch in itertools.count():
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, n - micro * world + 1, micro * world):
            yield order[start + rank * micro : start + (rank + 1) * micro]


def deepspeed_config(
    cfg: TrainConfig, precision: str, on_cpu: bool, accumulation: int, total_steps: int
) -> dict[str, Any]:
    optimizer_params: dict[str, Any] = {
        "lr": cfg.lr,
        "betas": [cfg.beta1, cfg.beta2],
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
    }
    config: dict[str, Any] = {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 10**9,  # we log ourselves
        "zero_optimization": {
            "stage": 2,
            "contiguous_gradients": True,
            "allgather_bucket_size": 500_000_000,
            "allgather_partitions": True,
        },
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0,
                "warmup_max_lr": cfg.lr,
                "warmup_num_steps": max(cfg.min_warmup_steps, int(total_steps * cfg.warmup_rate)),
                "total_num_steps": total_steps,
                "warmup_type": "log",  # DeepSpeed's default, spelled out: the lr of step 0 is 0
            },
        },
    }
    if cfg.offload_optimizer:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        if on_cpu:
            # DeepSpeedCPUAdam is JIT-compiled on first use (measured: ~6 min on 2 cores); on a CPU-only
            # machine torch's AdamW does the same update with no build.
            optimizer_params["torch_adam"] = True
            config["zero_force_ds_cpu_optimizer"] = False
    if precision == "fp16":
        config["fp16"] = {"enabled": True, "min_loss_scale": 1}  # dynamic loss scaling, as the original
    elif precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


# --- pieces ----------------------------------------------------------------------------------------


def resolve_base(cfg: TrainConfig) -> tuple[Path, Path, dict[str, Any]]:
    """(LLM dir, ImageBind checkpoint, ImageBind config) from --base or --vicuna/--imagebind."""
    if cfg.base:
        from service.bundle import load_bundle

        bundle = load_bundle(cfg.base)
        return bundle.llm_dir, bundle.imagebind_path, bundle.imagebind.config
    if not (cfg.vicuna and cfg.imagebind):
        raise ValueError("name the model: --base BUNDLE, or both --vicuna DIR and --imagebind FILE")
    from training.convert import resolve_imagebind_preset

    _, preset = resolve_imagebind_preset(Path(cfg.imagebind))
    return Path(cfg.vicuna).resolve(), Path(cfg.imagebind).resolve(), dataclasses.asdict(preset)


def _features(
    cfg: TrainConfig, examples: list[Any], imagebind: Path, config: dict[str, Any], rank: int
) -> torch.Tensor:
    """Rank 0 encodes what the cache lacks while the others wait; then every rank reads the cache."""
    import torch.distributed as dist

    from encoders.imagebind import ImageBindConfig
    from training.features import compute_features

    cache_root = Path(cfg.features or Path(cfg.out) / "features")
    images = [e.image for e in examples]

    def compute() -> torch.Tensor:
        features, stats = compute_features(
            images,
            imagebind,
            ImageBindConfig(**config),
            cache_root,
            decode_workers=cfg.decode_workers,
            progress=cfg.progress and rank == 0,
        )
        if rank == 0:
            log.info("features: %d distinct images, %d encoded now", stats.images, stats.encoded)
        return features

    if rank == 0:
        features = compute()
    dist.barrier()
    if rank != 0:
        features = compute()
    return features


def _load_delta(model: torch.nn.Module, path: Path) -> None:
    """Initialise the trainable parameters from a delta checkpoint (same key names); every one must be there."""
    from training.convert import load_delta

    delta = load_delta(path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(trainable - delta.keys()), sorted(delta.keys() - trainable)
    if missing or unexpected:
        raise ValueError(f"{path}: does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(delta, strict=False)


def export_info(cfg: TrainConfig, llm_dir: Path, imagebind: Path, imagebind_config: dict[str, Any]) -> dict[str, Any]:
    """What `pandaserve train export` needs beside the weights."""
    return {
        "llm": str(Path(llm_dir).resolve()),
        "imagebind": {"checkpoint": str(Path(imagebind).resolve()), "config": imagebind_config},
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout},
        "config": dataclasses.asdict(cfg),
    }


def save_checkpoint(engine: Any, model: Any, out: Path, step: int, info: dict[str, Any], rank: int) -> None:
    """DeepSpeed's state (frozen weights excluded: the base model is referenced, not copied), plus
    the trainable weights under the original delta's names for export."""
    from safetensors.torch import save_file

    tag = f"step-{step:06d}"
    engine.save_checkpoint(str(out / CHECKPOINTS), tag=tag, client_state={"step": step}, exclude_frozen_parameters=True)
    if rank == 0:
        directory = out / CHECKPOINTS / tag
        # ZeRO-2 keeps every parameter whole on every rank: the module's copy is the trained one.
        state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state().items()}
        save_file(state, str(directory / TRAINABLE), metadata={"format": "pt"})
        (directory / EXPORT_INFO).write_text(json.dumps({**info, "step": step}, indent=2) + "\n")


def _across_ranks(loss: float, tokens: int) -> tuple[float, int]:
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return loss, tokens
    t = torch.tensor([loss, float(tokens)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t[0].item() / dist.get_world_size(), int(t[1].item())


def _precision(requested: str, on_cpu: bool) -> str:
    if requested not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {PRECISIONS}, got {requested!r}")
    if requested == "fp16" and on_cpu:
        # DeepSpeed refuses fp16 on its CPU accelerator ("Type fp16 is not supported on your device").
        log.warning("fp16 is not supported on CPU; training in fp32 (bf16 is the other choice)")
        return "fp32"
    return requested


def _single_process_defaults() -> None:
    """Started without DeepSpeed's launcher: a world of one, on a free local port."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def plot_losses(metrics: Path, png: Path) -> None:
    """loss and lr against the step, from metrics.jsonl (a resumed run's steps included)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'pandaserve[train]')", png)
        return
    by_step = {r["step"]: r for r in map(json.loads, metrics.read_text().splitlines())}  # a re-run step: the last
    steps = sorted(by_step)
    fig, loss_ax = plt.subplots(figsize=(8, 4.5))
    loss_ax.plot(steps, [by_step[s]["loss"] for s in steps], color="tab:blue")
    loss_ax.set(xlabel="optimizer step", ylabel="loss", title="PandaGPT training loss")
    lr_ax = loss_ax.twinx()
    lr_ax.plot(steps, [by_step[s]["lr"] for s in steps], color="tab:orange", alpha=0.6)
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()

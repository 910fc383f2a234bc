"""ImageBind-huge vision throughput on one CUDA GPU.

    PYTHONPATH=. python3 benchmarks/imagebind_gpu.py --out DIR [--cuda-graphs] [--compile]

Builds our ImageBind with the ``huge`` preset and random weights directly on the GPU (no
checkpoint is needed: the timings depend on shapes, not values), then for fp32, fp16 and bf16:

- images/s of ``model({"vision": x})`` (stem, trunk, head and postprocessor, as
  ``encoders.pool.EncoderPool.predict`` calls it) on 224x224 images already on the device,
  per batch size, with the peak memory of a forward;
- for bf16, the whole ``predict`` path: a float32 batch on the CPU moved with
  ``.to(device, dtype)`` (pageable memory, as the pool does) or through pinned memory, the
  forward, and the embeddings back to the CPU, to show what the host->device copy costs;
- optionally bf16 replayed from CUDA graphs (``--cuda-graphs``: no launch overhead, which
  is what limits small batches) and with each trunk block compiled by torch.compile
  (``--compile``);
- a profile of one bf16 batch, device time per operator.

Writes DIR/imagebind_h100.json (whatever the GPU; the device name is in it) and
DIR/profile_bf16.txt, and prints a table. Needs only torch and numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.imagebind import PRESETS, ImageBindModel

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMAGE = (3, 224, 224)


def build(dtype: torch.dtype, device: torch.device) -> ImageBindModel:
    """The huge model with the constructors' random init, built in place on the GPU."""
    torch.manual_seed(0)  # the same weights for every dtype, so outputs can be compared
    with device:
        model = ImageBindModel(PRESETS["huge"])
    model.to(dtype).eval().requires_grad_(False)
    return model


def cuda_seconds(fn: Callable[[], object], iters: int) -> float:
    """Device time of `iters` calls of fn, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def images_per_s(fn: Callable[[], object], batch: int, warmup: int, repeats: int, min_s: float) -> dict[str, float]:
    """Warm up, pick an iteration count that runs >= min_s, take the median of `repeats` runs."""
    for _ in range(warmup):
        fn()
    one = cuda_seconds(fn, 1)
    iters = max(1, math.ceil(min_s / one))
    runs = [cuda_seconds(fn, iters) / iters for _ in range(repeats)]
    median = statistics.median(runs)
    return {
        "images_per_s": batch / median,
        "ms_per_batch": median * 1e3,
        "spread_pct": 100 * (max(runs) - min(runs)) / median,
        "iters": iters,
        "repeats": repeats,
    }


def wall_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median host wall time of fn (which must synchronise itself, as .cpu() does)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


Forward = Callable[[], object]


def eager(model: ImageBindModel) -> Callable[[torch.Tensor], Forward]:
    def make(x: torch.Tensor) -> Forward:
        return lambda: model({"vision": x})["vision"]

    return make


def cuda_graph(model: ImageBindModel) -> Callable[[torch.Tensor], Forward]:
    """The same forward captured once per input shape and replayed: no launch overhead."""

    def make(x: torch.Tensor) -> Forward:
        side = torch.cuda.Stream()  # warm up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model({"vision": x})
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model({"vision": x})
        return graph.replay

    return make


def sweep(
    make: Callable[[torch.Tensor], Forward], dtype: torch.dtype, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """images/s and peak memory per batch size; `make` turns an input batch into a forward to time."""
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, *IMAGE, device="cuda").to(dtype)
        forward = make(x)
        forward()  # first call at this shape (cuDNN/cuBLAS heuristics, compile) stays out of memory too
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        row: dict[str, Any] = {"batch": batch}
        row.update(images_per_s(forward, batch, args.warmup, args.repeats, args.min_seconds))
        row["peak_mem_gib"] = peak / 2**30
        row["activation_mem_gib"] = (peak - before) / 2**30
        rows.append(row)
        ips, peak_gib = row["images_per_s"], row["peak_mem_gib"]
        print(f"  batch {batch:4d}: {ips:8.1f} images/s, peak {peak_gib:.2f} GiB", flush=True)
        del x, forward
    return rows


def host_to_device(model: ImageBindModel, dtype: torch.dtype, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """The pool's predict (CPU float32 batch in, CPU float32 embeddings out), pageable vs pinned."""
    device = torch.device("cuda")
    array = np.random.default_rng(0).standard_normal((batch, *IMAGE), dtype=np.float32)
    pinned = torch.from_numpy(array).pin_memory()
    on_device = torch.from_numpy(array).to(device, dtype)

    def copy_pageable() -> torch.Tensor:  # exactly EncoderPool.predict's copy
        x = torch.from_numpy(array).to(device, dtype)
        torch.cuda.synchronize()
        return x

    def copy_pinned() -> torch.Tensor:
        x = pinned.to(device, non_blocking=True).to(dtype)
        torch.cuda.synchronize()
        return x

    def predict_pageable() -> torch.Tensor:
        x = torch.from_numpy(array).to(device, dtype)
        return model({"vision": x})["vision"].float().cpu()

    def predict_pinned() -> torch.Tensor:
        x = pinned.to(device, non_blocking=True).to(dtype)
        return model({"vision": x})["vision"].float().cpu()

    def predict_input_on_device() -> torch.Tensor:
        return model({"vision": on_device})["vision"].float().cpu()

    mb = array.nbytes / 1e6
    row: dict[str, Any] = {"batch": batch, "input_mb_fp32": mb}
    for fn in (copy_pageable, copy_pinned, predict_pageable, predict_pinned, predict_input_on_device):
        seconds = wall_seconds(fn, args.warmup, max(args.repeats, 5))
        row[f"{fn.__name__}_ms"] = seconds * 1e3
        if fn.__name__.startswith("copy"):
            row[f"{fn.__name__}_gb_per_s"] = mb / 1e3 / seconds
        else:
            row[f"{fn.__name__}_images_per_s"] = batch / seconds
    print(
        f"  batch {batch:4d}: copy pageable {row['copy_pageable_ms']:.2f} ms, pinned {row['copy_pinned_ms']:.2f} ms;"
        f" predict {row['predict_pageable_images_per_s']:.0f} / {row['predict_pinned_images_per_s']:.0f}"
        f" / {row['predict_input_on_device_images_per_s']:.0f} images/s (pageable / pinned / on device)",
        flush=True,
    )
    return row


def profile(model: ImageBindModel, dtype: torch.dtype, batch: int, path: Path) -> dict[str, list[dict[str, Any]]]:
    """Device time per operator and per kernel over two forwards; the full tables go to `path`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.randn(batch, *IMAGE, device="cuda").to(dtype)
    model({"vision": x})
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            model({"vision": x})
        torch.cuda.synchronize()
    events = prof.key_averages()
    path.write_text(events.table(sort_by="self_device_time_total", row_limit=80))
    # Kernels are rows of their own; operators carry the device time of the kernels they launch.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in kernels)

    def top(rows: list[Any]) -> list[dict[str, Any]]:
        rows = sorted(rows, key=lambda e: -e.self_device_time_total)[:15]
        return [
            {
                "name": e.key,
                "ms_per_forward": e.self_device_time_total / 1e3 / 2,
                "calls_per_forward": e.count / 2,
                "share_pct": 100 * e.self_device_time_total / total,
            }
            for e in rows
        ]

    return {"ops": top(ops), "kernels": top(kernels)}


def embedding_agreement(models: dict[str, ImageBindModel], fp32_out: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Smallest cosine similarity of each half-precision model's embeddings to fp32's (same weights)."""
    out = {}
    for name, model in models.items():
        got = model({"vision": x.to(next(model.parameters()).dtype)})["vision"].float()
        out[name] = torch.nn.functional.cosine_similarity(got, fp32_out, dim=-1).min().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", default="1,8,32,64,128,256", help="comma-separated batch sizes")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--h2d-batches", default="32,128", help="batch sizes for the host->device timings (bf16)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="device time per timed repeat, at least")
    parser.add_argument("--profile-batch", type=int, default=128)
    parser.add_argument("--cuda-graphs", action="store_true", help="also time bf16 replayed from CUDA graphs")
    parser.add_argument("--compile", action="store_true", help="also time bf16 with torch.compile on each block")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs"],
        help="torch.compile mode for --compile; max-autotune compiles for about a minute per batch size",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.h2d_batches = [int(b) for b in args.h2d_batches.split(",")]
    device = torch.device("cuda")

    props = torch.cuda.get_device_properties(device)
    report: dict[str, Any] = {
        "device": props.name,
        "multiprocessors": props.multi_processor_count,
        "gpu_memory_gib": props.total_memory / 2**30,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "model": "ImageBind huge (our encoders.imagebind, random weights), vision branch incl. head/postprocess",
        "input": "224x224 RGB images, model({'vision': x}) as encoders.pool.EncoderPool.predict calls it",
        "results": {},
    }
    print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {report['cudnn']}", flush=True)

    path = args.out / "imagebind_h100.json"
    results: dict[str, Any] = report["results"]
    check_x = torch.randn(8, *IMAGE, device="cuda")
    fp32_out: torch.Tensor | None = None
    agreement: dict[str, float] = {}
    report["min_cosine_vs_fp32"] = agreement
    with torch.inference_mode():
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            model = build(dtype, device)
            weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            print(f"{name}: whole model (all six branches) {weights / 2**30:.2f} GiB of weights", flush=True)
            results[name] = {"weights_gib": weights / 2**30, "rows": sweep(eager(model), dtype, args)}
            if name == "fp32":
                fp32_out = model({"vision": check_x})["vision"].float()
            elif fp32_out is not None:
                agreement.update(embedding_agreement({name: model}, fp32_out, check_x))
            if name == "bf16":
                print("bf16, the pool's predict with a CPU float32 batch:", flush=True)
                report["host_to_device_bf16"] = [host_to_device(model, dtype, b, args) for b in args.h2d_batches]
                report["profile_bf16"] = {
                    "batch": args.profile_batch,
                    **profile(model, dtype, args.profile_batch, args.out / "profile_bf16.txt"),
                }
                if args.cuda_graphs:
                    print("bf16, CUDA graph replay:", flush=True)
                    rows = sweep(cuda_graph(model), dtype, args)
                    results["bf16_cuda_graph"] = {"weights_gib": weights / 2**30, "rows": rows}
                if args.compile:
                    # Regional compilation: the 32 identical blocks share one compiled graph,
                    # specialised per batch size (dynamic=False).
                    for block in model.modality_trunks["vision"].get_submodule("blocks").children():
                        block.compile(mode=args.compile_mode, dynamic=False)
                    print("bf16 + torch.compile (each vision block):", flush=True)
                    started = time.perf_counter()
                    rows = sweep(eager(model), dtype, args)
                    results["bf16_compiled_blocks"] = {
                        "compile_mode": args.compile_mode,
                        "weights_gib": weights / 2**30,
                        "rows": rows,
                        "sweep_seconds_incl_compile": time.perf_counter() - started,
                    }
            del model
            torch.cuda.empty_cache()
            path.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a later failure
    print(f"\nwrote {path}")
    print(f"\n{props.name}: ImageBind-huge vision, images/s (peak GiB allocated)")
    names = list(report["results"])
    print("batch " + "".join(f"{n:>24s}" for n in names))
    for i, batch in enumerate(args.batches):
        cells = []
        for n in names:
            r = report["results"][n]["rows"][i]
            cells.append(f"{r['images_per_s']:12.1f} ({r['peak_mem_gib']:5.2f} GiB)")
        print(f"{batch:5d} " + "".join(f"{c:>24s}" for c in cells))
    print("\nbf16 predict from a CPU float32 batch (ms per batch):")
    for r in report["host_to_device_bf16"]:
        print(
            f"  batch {r['batch']}: {r['input_mb_fp32']:.0f} MB; copy pageable {r['copy_pageable_ms']:.2f},"
            f" pinned {r['copy_pinned_ms']:.2f}; predict pageable {r['predict_pageable_ms']:.1f},"
            f" pinned {r['predict_pinned_ms']:.1f}, input on device {r['predict_input_on_device_ms']:.1f}"
        )
    print(f"\nbf16 profile, batch {args.profile_batch}, device time per forward:")
    for kind in ("ops", "kernels"):
        for op in report["profile_bf16"][kind][:10]:
            ms, share, calls = op["ms_per_forward"], op["share_pct"], op["calls_per_forward"]
            print(f"  {ms:8.2f} ms {share:5.1f}% x{calls:<5g} {op['name'][:80]}")
        print()
    print(f"\nmin cosine similarity to fp32 embeddings (same weights and images): {agreement}")


if __name__ == "__main__":
    main()

"""DeepSpeed training end to end on generated data, on CPU (DS_ACCELERATOR=cpu, one process, fp32):
the loss falls over 20 steps; stopping at step 10 and resuming gives the unbroken run's step-20
loss; the export is served by `pandaserve serve` with HF + PEFT's greedy replies; and its delta
goes through `convert-pandagpt` to the same bundle."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, running_server
from tests.media import picture
from tests.oracle import Oracle, assert_served_chat_equals
from tests.training.test_convert import LORA_KEY
from training.demo_bundle import NUM_LAYERS

pytestmark = pytest.mark.integration

EXAMPLES = 40  # x 2 epochs / batch 4 = 20 optimizer steps
STEPS = 20
COLOURS = ["red", "green", "blue", "yellow", "purple"]


def write_data(root: Path) -> None:
    """20 distinct generated images, each in two conversations of 1 or 2 exchanges; names without an
    extension (".jpg" is appended) and with one."""
    (root / "images").mkdir(parents=True)
    items = []
    for i in range(EXAMPLES):
        seed, colour = i % 20, COLOURS[i % 5]
        name = f"img{seed:02d}" if seed % 2 else f"img{seed:02d}.png"
        path = root / "images" / (name if name.endswith(".png") else name + ".jpg")
        path.write_bytes(picture(seed, (320, 240), "PNG" if seed % 2 == 0 else "JPEG"))
        conversation = [
            {"from": "human", "value": "What is in the picture?"},
            {"from": "gpt", "value": f"A {colour} square on a bright background."},
        ]
        if i % 2:
            conversation += [
                {"from": "human", "value": "What colour is the square?"},
                {"from": "gpt", "value": f"It is {colour}."},
            ]
        items.append({"image_name": name, "conversation": conversation})
    (root / "data.json").write_text(json.dumps(items, indent=1))


def train(root: Path, demo_bundle: Path, out: Path, *extra: str) -> None:
    """`pandaserve train run` as a user starts it on one machine: no launcher, one process."""
    args = ["--data", str(root / "data.json"), "--image-root", str(root / "images"), "--base", str(demo_bundle)]
    args += ["--out", str(out), "--features", str(root / "features"), "--batch-size", "4", "--micro-batch-size", "2"]
    args += ["--max-tgt-len", "64", "--precision", "fp32", "--save-every", "10", "--no-progress", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "pandaserve", "train", "run", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env | {"DS_ACCELERATOR": "cpu"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def metrics(out: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    write_data(root)
    return root


@pytest.fixture(scope="module")
def unbroken(data: Path, demo_bundle: Path) -> Path:
    train(data, demo_bundle, data / "unbroken")
    return data / "unbroken"


@pytest.fixture(scope="module")
def resumed(data: Path, demo_bundle: Path, unbroken: Path) -> Path:
    out = data / "resumed"
    train(data, demo_bundle, out, "--max-steps", "10")
    assert sorted(metrics(out)) == list(range(1, 11))
    train(data, demo_bundle, out, "--resume")
    return out


def test_loss_falls(unbroken: Path) -> None:
    m = metrics(unbroken)
    assert sorted(m) == list(range(1, STEPS + 1))
    first, last = (sum(m[s]["loss"] for s in steps) / 3 for steps in ((1, 2, 3), (18, 19, 20)))
    print(f"loss: steps 1-3 {first:.3f}, steps 18-20 {last:.3f}; per step {[round(m[s]['loss'], 3) for s in m]}")
    assert last < 0.6 * first
    assert all(m[s]["tokens_per_s"] > 0 for s in m)
    assert (unbroken / "loss.png").stat().st_size > 1000


def test_schedule_is_warmup_decay_lr_with_log_warmup(unbroken: Path) -> None:
    """DeepSpeed's WarmupDecayLR as the original configured it: warm-up max(10, 10% of 20) = 10 steps,
    log-shaped from 0 (its first two steps have lr 0), then linear to 0 at the last step."""
    lr, warmup = 5e-4, 10
    for step, record in metrics(unbroken).items():
        it = step - 2  # the scheduler's iteration when this step's update ran (-1 before its first step)
        if it < 0:
            expected = 0.0  # warmup_min_lr
        elif it < warmup:
            expected = lr * math.log(it + 1) / math.log(warmup)
        else:
            expected = lr * (STEPS - it) / (STEPS - warmup)
        assert record["lr"] == pytest.approx(expected, abs=1e-12), step


def test_stop_at_10_then_resume_equals_unbroken(unbroken: Path, resumed: Path) -> None:
    a, b = metrics(unbroken), metrics(resumed)
    assert sorted(b) == list(range(1, STEPS + 1))
    print(f"step-20 loss: unbroken {a[STEPS]['loss']!r}, resumed {b[STEPS]['loss']!r}")
    # Bit-equal on this machine; the tolerance allows CPU kernels that reorder sums between processes.
    for step in range(1, STEPS + 1):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
    final_a = load_file(str(unbroken / "checkpoints" / "step-000020" / "trainable.safetensors"))
    final_b = load_file(str(resumed / "checkpoints" / "step-000020" / "trainable.safetensors"))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], rtol=1e-4, atol=1e-6), key


# --- export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(unbroken: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exported")
    cmd = [sys.executable, "-m", "pandaserve", "train", "export", str(unbroken), str(root / "bundle")]
    proc = subprocess.run([*cmd, "--delta", str(root / "delta")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def exported_server(exported: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(exported / "bundle", redis_url, tmp_path_factory.mktemp("exported-server")) as running:
        yield running.url


def test_export_holds_the_trained_weights(exported: Path, unbroken: Path) -> None:
    trained = load_file(str(unbroken / "checkpoints" / "step-000020" / "trainable.safetensors"))
    projector = load_file(str(exported / "bundle" / "projector.safetensors"))
    adapter = load_file(str(exported / "bundle" / "lora" / "adapter_model.safetensors"))
    assert torch.equal(projector["llama_proj.weight"], trained["llama_proj.weight"])
    assert len(adapter) == NUM_LAYERS * 8
    b = adapter["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    assert torch.equal(b, trained[LORA_KEY.format(i=1, p="v", ab="B")])
    assert b.abs().max() > 0  # PEFT starts B at zero: training moved it


def test_served_export_equals_hf_peft(exported_server: str, exported: Path) -> None:
    oracle = Oracle(exported / "bundle")
    media = [("image", picture(3, (320, 240), "JPEG"))]
    assert_served_chat_equals(exported_server, oracle, ["What is in the picture?", "What colour is the square?"], media)


def test_delta_round_trips_through_convert_pandagpt(exported: Path, demo_bundle: Path, unbroken: Path) -> None:
    """export --delta writes the original's format (its key names); convert-pandagpt turns it into the
    very bundle export wrote, which the test above serves."""
    delta = torch.load(exported / "delta" / "pytorch_model.pt", weights_only=True)
    expected_keys = {"llama_proj.weight", "llama_proj.bias"}
    expected_keys |= {LORA_KEY.format(i=i, p=p, ab=ab) for i in range(NUM_LAYERS) for p in "qkvo" for ab in "AB"}
    assert delta.keys() == expected_keys
    cmd = [sys.executable, "-m", "pandaserve", "bundle", "convert-pandagpt", "--vicuna", str(demo_bundle / "llm")]
    cmd += ["--delta", str(exported / "delta"), "--imagebind", str(demo_bundle / "imagebind.pth")]
    proc = subprocess.run([*cmd, str(exported / "converted")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("manifest.json", "projector.safetensors", "lora/adapter_model.safetensors"):
        assert (exported / "converted" / rel).read_bytes() == (exported / "bundle" / rel).read_bytes(), rel
    # PEFT keeps target_modules as a set: its order in the JSON follows the process's string hashing.
    configs = [json.loads((exported / d / "lora" / "adapter_config.json").read_text()) for d in ("converted", "bundle")]
    for config in configs:
        config["target_modules"] = sorted(config["target_modules"])
    assert configs[0] == configs[1]

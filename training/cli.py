"""The model-making commands of `pandaserve`: write bundles (the demo, converted PandaGPT weights),
train the projector and LoRA, export a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def bundle_demo(args: argparse.Namespace) -> None:
    from training.demo_bundle import build_demo_bundle
    from training.demo_recipe import build_seeing_bundle
    from training.demo_videollama import build_videollama_demo

    if (args.dir / "manifest.json").exists() and not args.force:
        print(f"{args.dir} already holds a bundle (use --force to rebuild)")
        return
    if args.family == "videollama":
        if not (args.base / "manifest.json").exists():
            raise SystemExit(f"--base {args.base} holds no bundle: write the PandaGPT demo there first")
        build_videollama_demo(args.dir, args.base, seed=args.seed, template=args.template)
    elif args.random:
        build_demo_bundle(args.dir, seed=args.seed)
    else:
        build_seeing_bundle(args.dir, seed=args.seed)  # it says what it does, stage by stage
    print(f"demo bundle written to {args.dir}")


def bundle_convert_pandagpt(args: argparse.Namespace) -> None:
    from training.convert import convert_pandagpt

    try:
        convert_pandagpt(args.vicuna, args.delta, args.imagebind, args.out)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"pandaserve bundle convert-pandagpt: {exc}") from exc
    print(f"bundle written to {args.out}")


def bundle_convert_videollama(args: argparse.Namespace) -> None:
    from training.convert_videollama import convert_videollama

    try:
        convert_videollama(
            args.llm, args.vl, args.eva_vit, args.qformer, args.out, args.al, args.imagebind, args.template
        )
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"pandaserve bundle convert-videollama: {exc}") from exc
    print(f"bundle written to {args.out}")


def train_run(args: argparse.Namespace) -> None:
    import logging

    from training.data import DatasetError
    from training.train import config_from_args, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        train(config_from_args(args))
    except (DatasetError, FileNotFoundError) as exc:
        raise SystemExit(f"pandaserve train run: {exc}") from exc


def train_export(args: argparse.Namespace) -> None:
    from training.export import export_checkpoint

    try:
        used = export_checkpoint(args.ckpt, args.out, delta=args.delta)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"pandaserve train export: {exc}") from exc
    print(f"bundle written to {args.out} from {used}" + (f"; delta in {args.delta}" if args.delta else ""))


def add_commands(commands: Any) -> None:
    """`bundle` and `train`, on the `pandaserve` parser's subcommands."""
    b = commands.add_parser("bundle", help="write model bundles")
    bundles = b.add_subparsers(dest="bundle_command", required=True)
    d = bundles.add_parser("demo", help="train the tiny demo bundle (colours and shapes), deterministic from a seed")
    d.add_argument("dir", type=Path)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--random", action="store_true", help="untrained random weights (seconds; what tests compare)")
    d.add_argument("--force", action="store_true", help="rebuild even if the directory holds a bundle")
    d.add_argument(
        "--family",
        choices=["pandagpt", "videollama"],
        default="pandagpt",
        help="videollama: Video-LLaMA's tiny branches, random, over --base's LLM and ImageBind",
    )
    d.add_argument("--base", type=Path, default=Path("bundles/demo"), help="with --family videollama")
    d.add_argument("--template", choices=["vicuna", "llama2"], default="vicuna", help="with --family videollama")
    d.set_defaults(run=bundle_demo)
    c = bundles.add_parser("convert-pandagpt", help="turn the released PandaGPT weights into a bundle")
    c.add_argument("--vicuna", type=Path, required=True, help="Vicuna v0 HF dir (referenced, not copied)")
    c.add_argument("--delta", type=Path, required=True, help="PandaGPT's pytorch_model.pt (LoRA + projector)")
    c.add_argument("--imagebind", type=Path, required=True, help="imagebind_huge.pth (referenced, not copied)")
    c.add_argument("out", type=Path)
    c.set_defaults(run=bundle_convert_pandagpt)
    v = bundles.add_parser("convert-videollama", help="turn the released Video-LLaMA files into a bundle")
    v.add_argument("--llm", type=Path, required=True, help="the base LLM's HF dir (referenced, not copied)")
    v.add_argument("--vl", type=Path, required=True, help="the VL checkpoint (the video branch)")
    v.add_argument("--al", type=Path, help="the AL checkpoint (the audio branch; needs --imagebind)")
    v.add_argument("--eva-vit", type=Path, required=True, help="eva_vit_g.pth")
    v.add_argument("--qformer", type=Path, required=True, help="blip2_pretrained_flant5xxl.pth")
    v.add_argument("--imagebind", type=Path, help="imagebind_huge.pth (referenced, not copied)")
    v.add_argument("--template", choices=["vicuna", "llama2"], default="vicuna", help="the LLM's chat template")
    v.add_argument("out", type=Path)
    v.set_defaults(run=bundle_convert_videollama)

    from training.train import add_config_flags

    t = commands.add_parser("train", help="train the projector and LoRA (DeepSpeed), export the result")
    trains = t.add_subparsers(dest="train_command", required=True)
    r = trains.add_parser("run", help="train on PandaGPT-format data (see training/train.py for every flag)")
    add_config_flags(r)
    r.set_defaults(run=train_run)
    x = trains.add_parser("export", help="write a bundle (and optionally the original delta) from a checkpoint")
    x.add_argument("ckpt", type=Path, help="a run directory, its checkpoints/ or one checkpoint directory")
    x.add_argument("out", type=Path, help="the bundle directory to write")
    x.add_argument("--delta", type=Path, help="also write DELTA/pytorch_model.pt (PandaGPT's delta format)")
    x.set_defaults(run=train_export)

"""The `pandaserve` command: serve a bundle, or write the demo bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.main import create_app
    from service.settings import Settings

    # Flags override the environment (PANDASERVE_*); unset flags leave it alone.
    overrides = {k: v for k, v in (("bundle", args.bundle), ("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)


def bundle_demo(args: argparse.Namespace) -> None:
    from training.demo_bundle import build_demo_bundle

    if (args.dir / "manifest.json").exists() and not args.force:
        print(f"{args.dir} already holds a bundle (use --force to rebuild)")
        return
    build_demo_bundle(args.dir, seed=args.seed)
    print(f"demo bundle written to {args.dir}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pandaserve", description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)

    s = commands.add_parser("serve", help="serve a model bundle over HTTP")
    s.add_argument("--bundle", type=Path, help="bundle directory (or PANDASERVE_BUNDLE)")
    s.add_argument("--host", help="default 127.0.0.1 (or PANDASERVE_HOST)")
    s.add_argument("--port", type=int, help="default 8000 (or PANDASERVE_PORT)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(run=serve)

    b = commands.add_parser("bundle", help="write model bundles")
    bundles = b.add_subparsers(dest="bundle_command", required=True)
    d = bundles.add_parser("demo", help="write the tiny demo bundle, deterministic from a seed")
    d.add_argument("dir", type=Path)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="rebuild even if the directory holds a bundle")
    d.set_defaults(run=bundle_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

"""The `pandaserve` command. Each package adds its own commands: serving (service/cli.py), and
making models (training/cli.py); this entry is the one module that sees both."""

from __future__ import annotations

import argparse

import service.cli
import training.cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pandaserve", description="Serve, make and train PandaGPT-style bundles.")
    commands = p.add_subparsers(dest="command", required=True)
    service.cli.add_commands(commands)
    training.cli.add_commands(commands)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

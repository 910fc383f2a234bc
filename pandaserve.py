"""The `pandaserve` command. Each package adds its own commands: serving (service/cli.py), and
making models (training/cli.py); this entry is the one module that sees both."""

from __future__ import annotations

import argparse
import sys

import service.cli
import service.client.cli
import training.cli


def parser(client_only: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pandaserve", description="Serve, make and train PandaGPT-style bundles.")
    commands = p.add_subparsers(dest="command", required=True)
    if client_only:
        # `pandaserve chat` is a client: the other commands' parsers import torch (seconds) to list
        # their flags, which a terminal client should not wait for.
        service.client.cli.add_command(commands)
        return p
    service.cli.add_commands(commands)
    training.cli.add_commands(commands)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(client_only=argv[:1] == ["chat"]).parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

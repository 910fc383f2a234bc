"""The serving commands of `pandaserve`: serve a bundle over HTTP, embed one file, serve the encoders
on their own, print the stock vLLM server's command for a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.app import create_app
    from service.api.lifecycle import DrainingServer
    from service.logs import configure_logging
    from service.settings import Settings

    # Flags override the environment (PANDASERVE_*); unset flags leave it alone.
    flags = [("bundle", args.bundle), ("host", args.host), ("port", args.port)]
    flags += [("engine_url", args.engine_url), ("encoder_url", args.encoder_url)]
    overrides = {k: v for k, v in flags if v is not None}
    settings = Settings(**overrides)
    configure_logging(args.log_level)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level, log_config=None)
    DrainingServer(config, app.state.lifecycle, settings.drain_timeout_s).run()


def embed(args: argparse.Namespace) -> None:
    """One file's ImageBind embedding, as POST /embeddings returns it, without starting the engine."""
    import asyncio

    from encoders.errors import MediaError
    from encoders.imagebind import ImageBindConfig, load_imagebind
    from encoders.media import MediaInput
    from encoders.pool import EncoderPool
    from service.api.routes.embeddings import embed as embed_media
    from service.api.schemas import EmbeddingsResponse
    from service.bundle import load_bundle
    from service.settings import Settings

    bundle = load_bundle(args.bundle)
    spec = bundle.imagebind
    model = load_imagebind(bundle.imagebind_path, ImageBindConfig(**spec.config))
    media = [MediaInput(args.modality, args.file.read_bytes(), f"{args.modality}[0]")]

    async def run() -> EmbeddingsResponse:
        pool = EncoderPool(model, Settings().media_limits(), bundle.manifest.modalities)
        try:
            return await embed_media(pool, media)
        finally:
            await pool.close()

    try:
        print(asyncio.run(run()).model_dump_json())
    except MediaError as exc:
        raise SystemExit(f"pandaserve embed: {exc}") from exc


def engine_command(args: argparse.Namespace) -> None:
    """The stock vLLM OpenAI server for a bundle, as one shell line (what tests, compose and Kubernetes run)."""
    import torch

    from service.bundle import load_bundle
    from service.engines.vllm_settings import server_command
    from service.families import load_family
    from service.resources import engine_config, served_model
    from service.settings import Settings

    settings = Settings(bundle=args.bundle)
    bundle = load_bundle(args.bundle)
    on_gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    config = engine_config(bundle, load_family(bundle), settings)
    print(server_command(config, served_model(bundle, settings.served_model_name).id, args.host, args.port, on_gpu))


def router_command(args: argparse.Namespace) -> None:
    """vllm-router in front of stock vLLM servers, keyed on the session, as one shell line."""
    from service.engines.vllm_settings import router_command as command

    print(command(args.engine_url, args.host, args.port, args.metrics_port))


def encoders_serve(args: argparse.Namespace) -> None:
    """The encoder service: the batched pool behind HTTP, for API replicas started with --encoder-url."""
    import uvicorn

    from service.api.encoder_app import create_encoder_app
    from service.logs import configure_logging
    from service.settings import Settings

    flags = (("bundle", args.bundle), ("host", args.host), ("port", args.port))
    settings = Settings(**{k: v for k, v in flags if v is not None})
    configure_logging(args.log_level)
    app = create_encoder_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, log_config=None)


def add_commands(commands: Any) -> None:
    """`serve`, `embed`, `encoders`, `engine` and `chat`, on the `pandaserve` parser's subcommands."""
    # The six field names from the client, not encoders.modalities: that imports torch, which would cost
    # every command (`pandaserve chat` included) seconds before it parses its arguments.
    from service.client.cli import add_command as add_chat_command
    from service.client.files import MODALITIES

    s = commands.add_parser("serve", help="serve a model bundle over HTTP")
    s.add_argument("--bundle", type=Path, help="bundle directory (or PANDASERVE_BUNDLE)")
    s.add_argument("--host", help="default 127.0.0.1 (or PANDASERVE_HOST)")
    s.add_argument("--port", type=int, help="default 8000 (or PANDASERVE_PORT)")
    s.add_argument("--engine-url", help="a stock vLLM server or router; default: vLLM in this process")
    s.add_argument("--encoder-url", help="an encoder service (pandaserve encoders serve); default: in this process")
    s.add_argument("--log-level", default="info")
    s.set_defaults(run=serve)

    e = commands.add_parser("embed", help="print one file's ImageBind embedding as JSON")
    e.add_argument("--bundle", type=Path, required=True)
    e.add_argument("--modality", required=True, choices=list(MODALITIES))
    e.add_argument("file", type=Path)
    e.set_defaults(run=embed)

    n = commands.add_parser("encoders", help="the encoder service (ImageBind's batched pool over HTTP)")
    encoders = n.add_subparsers(dest="encoders_command", required=True)
    v = encoders.add_parser(
        "serve", help="serve the bundle's encoders (settings: PANDASERVE_*, REDIS_URL for the cache)"
    )
    v.add_argument("--bundle", type=Path, help="bundle directory (or PANDASERVE_BUNDLE)")
    v.add_argument("--host", help="default 127.0.0.1 (or PANDASERVE_HOST)")
    v.add_argument("--port", type=int, help="default 8000 (or PANDASERVE_PORT)")
    v.add_argument("--log-level", default="info")
    v.set_defaults(run=encoders_serve)

    g = commands.add_parser("engine", help="the stock vLLM server that serves a bundle")
    engine = g.add_subparsers(dest="engine_command", required=True)
    c = engine.add_parser("command", help="print its command line (settings: the PANDASERVE_* of the engine)")
    c.add_argument("--bundle", type=Path, required=True)
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8001)
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where it will run")
    c.set_defaults(run=engine_command)
    r = engine.add_parser(
        "router-command", help="print the command of vllm-router in front of engines (session affinity)"
    )
    r.add_argument("--engine-url", action="append", required=True, help="a stock vLLM server; repeat for each")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8002)
    r.add_argument("--metrics-port", type=int, default=29000, help="the router's Prometheus metrics")
    r.set_defaults(run=router_command)

    add_chat_command(commands)  # the client side: service/client/cli.py

"""`dream serve`: keep a model loaded and answer AUTOMATIC1111's web API (and `dream gen --server`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import console, hint, user_errors
from dreamcli.errors import InputError

# The flags every model a request names is loaded with (the server's machine decides them, not the request).
HARDWARE = ("device", "dtype", "offload", "quantize", "no_t5", "vae_tiling", "attention_slicing", "compile",
            "channels_last", "fuse_qkv", "allow_unsafe_pickle")


def loopback(host: str) -> bool:
    """True for an address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def address(host: str, port: int) -> str:
    """The server's URL for people (an IPv6 address in brackets)."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@common.with_shared_flags
def serve(
    host: Annotated[str | None, typer.Option(
        "--host", help="Address to bind (default 127.0.0.1; with --listen 0.0.0.0).", rich_help_panel="Server")] = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (A1111's is 7860).",
                                      rich_help_panel="Server")] = 7860,
    listen: Annotated[bool, typer.Option(
        "--listen", help="Allow an address other machines can reach (and warn): the server is a door into this one.",
        rich_help_panel="Server")] = False,
    api_auth: Annotated[str | None, typer.Option(
        "--api-auth", metavar="USER:PASS", help="Require HTTP basic auth on every route (as A1111's flag).",
        rich_help_panel="Server")] = None,
    models_dir: Annotated[list[str] | None, typer.Option(
        "--models-dir", help="Folder of .safetensors files and diffusers folders requests may name (repeatable).",
        rich_help_panel="Server")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Most steps one request may ask for.",
                                           rich_help_panel="Limits")] = 150,
    max_size: Annotated[int, typer.Option("--max-size", help="Longest side in pixels a request may ask for.",
                                          rich_help_panel="Limits")] = 2048,
    max_images: Annotated[int, typer.Option("--max-images", help="Most images one request may ask for.",
                                            rich_help_panel="Limits")] = 16,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body in bytes.",
                                          rich_help_panel="Limits")] = 64 * 1024 * 1024,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait behind the running one; more get "
                                       "503 with Retry-After.", rich_help_panel="Limits")] = 16,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags; they are every request's defaults
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Serve a loaded model over HTTP: AUTOMATIC1111's /sdapi/v1 API, a gallery at /, and `dream gen --server`.

    -o DIR also writes every picture there, with the usual names.
    """
    with user_errors():
        config, host, request = _configure(flags, host, listen, api_auth, models_dir,
                                           (max_steps, max_size, max_images, max_body, queue))
        if not loopback(host):  # said at once, before the model loads, whatever happens next
            who = "with the --api-auth credentials" if config.auth else "WITHOUT credentials (add --api-auth USER:PASS)"
            console.print(f"[bold yellow]warning:[/] dream serve listens on {address(host, port)}: anyone who can "
                          f"reach this machine can use it, {who}", soft_wrap=True, highlight=False)
        from dreamcli.run import load

        _loaded, notes = load([request])  # the heavy imports and the weights, once, before the first client
        for note in notes:
            hint(note, quiet)
    _serve(config, host, port, quiet)


def _configure(flags: dict, host: str | None, listen: bool, api_auth: str | None, models_dir: list[str] | None,
               limits: tuple):
    from dreamcli.config import merge_settings
    from dreamcli.requests import gen_request_from
    from dreamcli.server.guards import Limits, parse_auth
    from dreamcli.server.models import KnownModel, ModelTable

    host = host or ("0.0.0.0" if listen else "127.0.0.1")
    if not loopback(host) and not listen:
        raise InputError(f"--host {host} lets other machines reach this server: add --listen if you mean it "
                         "(and --api-auth USER:PASS)")
    for name, value in zip(("max-steps", "max-size", "max-images", "max-body", "queue"), limits, strict=True):
        if value < 1:
            raise InputError(f"--{name} {value} is too small: use 1 or more")
    auth = parse_auth(api_auth) if api_auth is not None else None
    settings, preset = merge_settings(flags)
    request = gen_request_from({**settings, "prompt": ""})  # the defaults every request starts from, checked now
    title = preset or Path(str(settings["model"])).name
    folders = [Path(folder).expanduser().resolve() for folder in models_dir or ()]
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"--models-dir {folder} is not a folder")
    hardware = {key: flags.get(key) for key in HARDWARE}
    table = ModelTable(KnownModel(title, str(settings["model"]), settings, "started"), folders, hardware,
                       bool(flags.get("allow_unsafe_pickle")))
    outdir = None
    if flags.get("outdir") is not None:
        from dreamcli.io.outputs import check_outdir

        outdir = Path(str(settings["outdir"])).expanduser().resolve()
        check_outdir(outdir)
    fmt = str(settings["format"]).lower().replace("jpeg", "jpg")
    if fmt not in ("png", "jpg", "webp"):
        raise InputError(f"unknown format {settings['format']!r}: use png, jpg or webp")
    from dreamcli.server.app import ServerConfig

    return ServerConfig(table, Limits(*limits), outdir, fmt, auth), host, request


def _serve(config, host: str, port: int, quiet: bool) -> None:
    """Run uvicorn until SIGINT / SIGTERM; on either, waiting clients are answered and the running job stops."""
    import uvicorn

    from dreamcli.server.app import create_app
    from dreamcli.server.worker import Worker

    worker = Worker(config.limits.queue)
    app = create_app(config, worker)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            worker.shutdown()  # answers the waiting clients now, and stops the running job at its next step
            super().handle_exit(sig, frame)

    where = address(host, port)
    hint(f"dream serve on {where} (model {config.models.current}; A1111 API at /sdapi/v1, docs at /docs); "
         "Ctrl-C stops it", quiet)
    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=5, lifespan="off"))
    server.run()
    worker.join(5)
    if not server.started:  # the port was taken, or the address is not this machine's
        raise typer.Exit(1)

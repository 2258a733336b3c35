"""`dream gen --server URL`: send planned requests to a running `dream serve` and get the pictures back.

Only the standard library and PIL: the client path never imports torch or diffusers, so it starts fast.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
from dataclasses import asdict
from urllib.parse import unquote, urlsplit

from dreamcli.errors import DreamError, InputError

CONNECT_TIMEOUT = 10.0  # seconds to reach the server; a picture may then take as long as it takes
GEN_PATH = "/dream/v1/gen"


class Server:
    """A `dream serve` address: http(s)://[user:pass@]host[:port][/prefix]."""

    def __init__(self, url: str):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--server {url!r} is not an http(s) URL: use e.g. http://127.0.0.1:7860")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if self.https else 80)
        except ValueError:
            raise InputError(f"--server {url!r} has a bad port: use e.g. http://127.0.0.1:7860") from None
        self.prefix = parts.path.rstrip("/")
        self.auth = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.auth = "Basic " + base64.b64encode(token).decode("ascii")
        self.shown = f"{parts.scheme}://{self.host}:{self.port}{self.prefix}"  # without the credentials

    def post(self, path: str, body: dict) -> dict:
        """POST JSON, return the JSON answer; errors become one-line DreamErrors (4xx input: exit 2)."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = cls(self.host, self.port, timeout=CONNECT_TIMEOUT)
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        if self.auth:
            headers["Authorization"] = self.auth
        try:
            connection.connect()
            connection.sock.settimeout(None)  # generating may take minutes
            connection.request("POST", self.prefix + path, body=data, headers=headers)
            answer = connection.getresponse()
            raw = answer.read()
        except (OSError, http.client.HTTPException) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
            if isinstance(e, socket.timeout):
                reason = "no answer"
            raise DreamError(f"cannot reach the dream server at {self.shown} ({reason}): start it with `dream serve`, "
                             "or leave out --server / DREAM_SERVER to run here") from None
        finally:
            connection.close()
        return self._answer(answer, raw)

    def _answer(self, answer, raw: bytes) -> dict:
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        detail = payload.get("detail") if isinstance(payload, dict) else None
        if not isinstance(detail, str):
            detail = json.dumps(detail) if detail is not None else raw[:200].decode("utf-8", "replace")
        status = answer.status
        if status == 200 and isinstance(payload, dict):
            return payload
        if status == 401:
            raise DreamError(f"the dream server at {self.shown} wants credentials: put them in the URL "
                             "(http://USER:PASS@host:port)")
        if status == 503:
            retry = answer.getheader("Retry-After")
            raise DreamError(f"the dream server at {self.shown} is busy: {detail}" +
                             (f" (retry after {retry} s)" if retry else ""))
        if status == 404:
            raise DreamError(f"{self.shown} is not a dream server (no {GEN_PATH}): start one with `dream serve`")
        if 400 <= status < 500:
            raise InputError(detail)
        raise DreamError(f"the dream server at {self.shown} failed ({status}): {detail}")


def request_fields(request) -> dict:
    """A GenRequest's own fields as JSON, without its model (the server decides how to load models)."""
    data = asdict(request)
    data.pop("model")
    return data


def model_title(plan) -> str:
    """The model name to send: the preset whose model the plan uses (the plan's own first, e.g. for an image's
    record naming the demo model), else the model's file or folder name. A path itself is never sent."""
    from pathlib import Path

    from dreamcli.config import load_preset, preset_names

    ref = plan.requests[0].model.model
    names = ([plan.preset] if plan.preset else []) + [name for name in preset_names() if name != plan.preset]
    for name in names:
        try:
            if load_preset(name).get("model") == ref:
                return name
        except InputError:  # a broken user preset is not this run's business
            continue
    return Path(ref).name


def check_remote(plan) -> None:
    """Refuse what a server cannot take from a client: paths on this machine (LoRAs, configs, embeddings)."""
    options = plan.requests[0].model
    if options.loras:
        raise InputError("--lora names a file on this machine, which the server cannot read: run without --server, "
                         "or put the LoRA in a preset on the server")
    if options.model_config:
        raise InputError("--model-config names a path on this machine: run without --server")
    if options.embeddings:
        raise InputError("--embedding names a file on this machine: run without --server, or put the file in the "
                         "server's $DREAMCLI_HOME/embeddings/ and use its name in the prompt")


def generate_remote(server: Server, plan):
    """Yield (PIL image, record, notes) for every image of the plan, made by the server, in order.

    With one image per model call each request goes alone, so its pictures come back (and are written) as soon as
    they exist; with --batch-size the whole plan goes at once, so the server packs the same batches a local run
    would.
    """
    from PIL import Image

    from dreamcli.io.metadata import parse_record

    check_remote(plan)
    title = model_title(plan)
    scheduler = plan.requests[0].model.scheduler
    groups = [[r] for r in plan.requests] if plan.batch_size == 1 else [plan.requests]
    for group in groups:
        answer = server.post(GEN_PATH, {"model": title, "scheduler": scheduler, "batch_size": plan.batch_size,
                                        "requests": [request_fields(r) for r in group]})
        for item in answer.get("images", []):
            image = Image.open(io.BytesIO(base64.b64decode(item["png"])))
            image.load()
            record = parse_record(image.info.get("dreamcli"))
            if record is None:
                raise DreamError(f"the dream server at {server.shown} sent a picture without its record")
            yield image, record, item.get("notes") or []

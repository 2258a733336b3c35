"""What a request may ask of the server (steps, size, images, body bytes), and who may ask (HTTP basic auth)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from dreamcli.errors import InputError
from dreamcli.upscalers import is_file_ref


@dataclass(frozen=True)
class Limits:
    """Per-request limits: past them the request is refused with a 4xx naming the limit and its flag."""

    max_steps: int = 150
    max_side: int = 2048
    max_images: int = 16  # batch_size x n_iter (or -n) of one request
    max_body: int = 64 * 1024 * 1024  # bytes: a few base64 pictures
    queue: int = 16  # requests waiting behind the running one

    def check(self, requests: list) -> None:
        """Refuse requests (GenRequest, Img2ImgRequest, InpaintRequest) over the limits."""
        for request in requests:
            steps = [request.num_inference_steps]
            if getattr(request, "hires_scale", None):
                steps.append(request.hires_steps or request.num_inference_steps)
            for value in steps:
                if value > self.max_steps:
                    raise InputError(f"steps {value} is over this server's limit of {self.max_steps} "
                                     "(dream serve --max-steps)")
            for name in ("width", "height"):
                value = getattr(request, name, None)
                scale = getattr(request, "hires_scale", None) or 1
                if value is not None and value * scale > self.max_side:
                    raise InputError(f"{name} {value}{f' x hires {scale:g}' if scale != 1 else ''} is over this "
                                     f"server's limit of {self.max_side} px a side (dream serve --max-size)")
            upscaler = getattr(request, "hires_upscaler", None)
            if upscaler and is_file_ref(upscaler):  # a request may name upscalers, never files
                raise InputError(f"hires upscaler {upscaler!r} is a file: this server takes latent, lanczos or the "
                                 "name of an upscaler it knows (dream upscale --upscaler list on the server)")
            if request.num_images > self.max_images:
                raise InputError(f"{request.num_images} images in one request is over this server's limit of "
                                 f"{self.max_images} (batch_size x n_iter; dream serve --max-images)")


class BodyTooLarge(HTTPException):
    """The request body passed Limits.max_body (an HTTPException, so that FastAPI's body reading passes it on)."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Pure ASGI middleware: HTTP basic auth on every route, and a cap on body bytes, declared or streamed."""

    def __init__(self, app, max_body: int, auth: tuple[str, str] | None = None):
        self.app = app
        self.max_body = max_body
        self.auth = auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.auth is not None and not self._authorised(headers.get(b"authorization", b"")):
            return await _send_json(send, 401, "not authenticated: send HTTP basic credentials (dream serve "
                                    "--api-auth)", [(b"www-authenticate", b'Basic realm="dream"')])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_json(send, 400, "bad Content-Length header")
            if size > self.max_body:
                return await _send_json(send, 413, self._too_large())
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self._too_large())
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"the request body is over this server's limit of {self.max_body} bytes (dream serve --max-body)"

    def _authorised(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        want_user, want_password = self.auth
        # Both compared, whatever the first gives, so that timing tells nothing.
        ok_user = secrets.compare_digest(user.encode(), want_user.encode())
        ok_password = secrets.compare_digest(password.encode(), want_password.encode())
        return bool(sep) and ok_user and ok_password


def parse_auth(text: str) -> tuple[str, str]:
    """`user:pass` (A1111's --api-auth) as a pair; the password may hold colons."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InputError(f"--api-auth wants USER:PASSWORD, got {text!r}")
    return user, password

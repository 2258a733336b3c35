"""The FastAPI app: thin routes that translate A1111 (and dream's own) requests, queue them, and answer."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel

from dreamcli.errors import DreamError, InputError
from dreamcli.requests import GenRequest, Img2ImgRequest, InpaintRequest, gen_request_from, model_options_from, shown
from dreamcli.server import a1111
from dreamcli.server.guards import GuardMiddleware, Limits
from dreamcli.server.models import ModelTable
from dreamcli.server.worker import Interrupted, QueueFull, ShuttingDown, Worker

API = "/sdapi/v1"
DISCONNECT_POLL = 0.5  # seconds between checks that a waiting client is still there
# GenRequest fields `dream gen --server` sends as they are (the model options are the server's).
GEN_FIELDS = tuple(f.name for f in fields(GenRequest) if f.name != "model")


@dataclass
class ServerConfig:
    """What `dream serve` decided: the models, the limits, and where images are also written (None: nowhere)."""

    models: ModelTable
    limits: Limits
    outdir: Path | None = None
    fmt: str = "png"
    auth: tuple[str, str] | None = None


class DreamGenBody(BaseModel):
    """POST /dream/v1/gen, what `dream gen --server` sends: its planned requests, field for field."""

    model: str | None = None  # a known model's title; None: the current one
    scheduler: str | None = None  # dream's scheduler name
    requests: list[dict]
    batch_size: int = 1


def create_app(config: ServerConfig, worker: Worker) -> FastAPI:
    """The app for one server: its routes share `config` and the one `worker` that runs every job."""
    app = FastAPI(title="dream serve", description="dreamcli behind AUTOMATIC1111's /sdapi/v1 API")
    app.add_middleware(GuardMiddleware, max_body=config.limits.max_body, auth=config.auth)
    models = config.models

    @app.exception_handler(DreamError)
    async def dream_error(_request: Request, error: DreamError):
        # Bad input is the client's to fix (422); anything else failed here (a model that will not load).
        return JSONResponse({"detail": str(error)}, status_code=422 if isinstance(error, InputError) else 500)

    async def run(request: Request, job):
        """Queue a job and wait for it; a client that goes away meanwhile has its job dropped or stopped."""
        try:
            future = worker.submit(job)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown as e:
            raise HTTPException(503, str(e)) from None
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    worker.cancel(future)
                    waiting.cancel()  # its outcome is nobody's now (and not an unretrieved error in the log)
                    raise HTTPException(499, "the client went away")  # nobody reads it
        except ShuttingDown as e:
            raise HTTPException(503, str(e)) from None
        except Interrupted:  # stopped because its client left: the answer goes nowhere
            raise HTTPException(499, "the client went away") from None

    def collect(results_of, on_step):
        """Run an iterator of results to its end, or to an interrupt: (results, warnings)."""
        results = []
        try:
            for result, _path in results_of(on_step):
                results.append(result)
        except Interrupted:
            if worker.stopping:
                raise ShuttingDown() from None
            if worker.state.cancelled:
                raise
            return results, [f"interrupted: {len(results)} image(s) finished"]
        return results, []

    def with_sampler(request, body: a1111.A1111Body):
        """The request with the scheduler the A1111 sampler name means for this model's family (it loads it)."""
        from dreamcli.engine import load_model

        loaded = load_model(request.model)
        name, notes = a1111.scheduler_for(body.sampler_name or body.sampler_index, body.scheduler, loaded.spec)
        if name is None:  # no sampler asked for: the model's settings (a preset's, `dream serve --scheduler`)
            return request, notes
        return replace(request, model=replace(request.model, scheduler=name)), notes

    @app.post(f"{API}/txt2img")
    async def txt2img(http: Request, body: a1111.Txt2ImgBody):
        from dreamcli.run import generate_written

        warnings = a1111.warnings_for(body)
        model = models.lookup(a1111.model_name(body)) if a1111.model_name(body) else models.get_current()
        settings = a1111.gen_settings(body, model.settings)
        request = gen_request_from(settings, model_options_from(settings))
        config.limits.check([request])
        batch = settings["batch_size"]

        def job(on_step):
            ready, notes = with_sampler(request, body)
            results, more = collect(lambda step: generate_written([ready], config.outdir, config.fmt, batch, step),
                                    on_step)
            return results, notes + more

        results, notes = await run(http, job)
        return a1111.response(body, results, warnings + notes + _notes(results))

    @app.post(f"{API}/img2img")
    async def img2img(http: Request, body: a1111.Img2ImgBody):
        from dreamcli.run import task_written

        warnings = a1111.warnings_for(body)
        if not body.init_images:
            raise InputError("init_images is empty: send the picture to redraw as base64 in init_images")
        if len(body.init_images) > 1:
            warnings.append(f"init_images holds {len(body.init_images)} pictures: only the first is used")
        model = models.lookup(a1111.model_name(body)) if a1111.model_name(body) else models.get_current()
        settings = a1111.gen_settings(body, model.settings, img2img=True)
        picture = a1111.decode_image(body.init_images[0], "init image")
        options = model_options_from(settings)
        shared = dict(prompt=body.prompt, negative_prompt=settings.get("negative") or "",
                      num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                      num_images=settings["num_images"], seed=settings["seed"], width=body.width, height=body.height)
        if body.mask:
            from dreamcli.tasks.inpaint import iter_inpaint as iterate

            mask = a1111.decode_image(body.mask, "mask")
            strength = 1.0 if body.denoising_strength is None else body.denoising_strength
            request = InpaintRequest(image=picture, mask=mask, model=options, strength=strength,
                                     mask_blur=4.0 if body.mask_blur is None else body.mask_blur,
                                     invert_mask=bool(body.inpainting_mask_invert), **shared)
            task = "inpaint"
        else:
            from dreamcli.tasks.img2img import iter_img2img as iterate

            strength = 0.75 if body.denoising_strength is None else body.denoising_strength
            request = Img2ImgRequest(image=picture, model=options, strength=strength, **shared)
            task = "img2img"
        config.limits.check([request])
        slug = body.prompt.strip() or f"{task} image"

        def job(on_step):
            ready, notes = with_sampler(request, body)
            results, more = collect(lambda step: task_written(iterate, ready, config.outdir, config.fmt, slug, step),
                                    on_step)
            return results, notes + more

        results, notes = await run(http, job)
        return a1111.response(body, results, warnings + notes + _notes(results))

    @app.post("/dream/v1/gen")
    async def dream_gen(http: Request, body: DreamGenBody):
        """dream's own door for `dream gen --server`: planned GenRequests in, PNGs with their records out."""
        from dreamcli.run import generate_written

        model = models.lookup(body.model) if body.model else models.get_current()
        options = model_options_from({**model.settings, "scheduler": body.scheduler})
        requests = []
        for item in body.requests:
            unknown = sorted(set(item) - set(GEN_FIELDS))
            if unknown:
                raise InputError(f"unknown request field {shown(unknown[0])}: use {', '.join(GEN_FIELDS)}")
            requests.append(GenRequest(model=options, **item))
        if not requests:
            raise InputError("no requests: send at least one")
        config.limits.check(requests)

        def job(on_step):
            return collect(lambda step: generate_written(requests, config.outdir, config.fmt, body.batch_size, step),
                           on_step)

        results, notes = await run(http, job)
        return {"images": [{"png": a1111.encode_png(r), "notes": list(r.notes)} for r in results],
                "warnings": notes}

    @app.get(f"{API}/sd-models")
    async def sd_models():
        out = []
        entries = models.entries()
        for title in models.titles():
            entry = entries.get(title)
            out.append({"title": title, "model_name": Path(title).stem, "hash": None, "sha256": None,
                        "filename": entry.ref if entry is not None and entry.kind != "preset" else title,
                        "config": None})
        return out

    @app.post(f"{API}/refresh-checkpoints")
    async def refresh_checkpoints():
        models.refresh()
        return None

    @app.get(f"{API}/samplers")
    async def samplers():
        return a1111.sampler_names()

    @app.get(f"{API}/scripts")
    async def scripts():
        return {"txt2img": [], "img2img": []}  # webuiapi asks, to learn which extensions exist

    @app.get(f"{API}/options")
    async def get_options():
        return {"sd_model_checkpoint": models.current, "samples_format": config.fmt,
                "outdir_samples": str(config.outdir) if config.outdir else ""}

    @app.post(f"{API}/options")
    async def set_options(http: Request, options: dict):
        ignored = [key for key in options if key != "sd_model_checkpoint"]
        if "sd_model_checkpoint" in options:
            model = models.lookup(options["sd_model_checkpoint"])
            request = gen_request_from({**model.settings, "prompt": ""})

            def job(_on_step):
                from dreamcli.run import load

                load([request])  # loaded now, as A1111 does, so the next picture starts at once

            await run(http, job)
            models.select(model.title)
        if ignored:
            return {"warnings": [f"option {key} is not supported by dream: ignored" for key in ignored]}
        return None

    @app.get(f"{API}/progress")
    async def progress():
        state = worker.state
        fraction = state.sampling_step / state.sampling_steps if state.sampling_steps and state.started else 0.0
        return {"progress": fraction, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                "state": {"job_count": state.job_count, "sampling_step": state.sampling_step,
                          "sampling_steps": state.sampling_steps, "interrupted": state.interrupted,
                          "skipped": False, "job": "", "job_no": 0, "job_timestamp": ""}}

    @app.post(f"{API}/interrupt")
    async def interrupt():
        worker.interrupt()
        return None

    @app.get("/", response_class=HTMLResponse)
    async def gallery():
        if config.outdir is None:
            return HTMLResponse("<!doctype html><title>dream serve</title><p>This server keeps no pictures: start it "
                                "with <code>dream serve -o DIR</code> to see them here. API: <a href=/docs>/docs</a>")
        from dreamcli.io.gallery import page

        return HTMLResponse(page(config.outdir, lambda path: f"/outputs/{path.name}"))

    @app.get("/outputs/{name}")
    async def output_file(name: str):
        # A plain file name in the output folder, nothing else: no folders, no dot files, no way out.
        if config.outdir is None or not re.fullmatch(r"[^/\\\x00]+", name) or name.startswith("."):
            raise HTTPException(404, "no such picture")
        folder = config.outdir.resolve()
        path = folder / name
        if path.parent != folder or path.is_symlink() or not path.is_file():
            raise HTTPException(404, "no such picture")
        return FileResponse(path)

    return app


def _notes(results) -> list[str]:
    seen = []
    for result in results:
        seen += [note for note in result.notes if note not in seen]
    return seen

"""AUTOMATIC1111's /sdapi/v1 request bodies (pydantic) and their translation to dream's settings and back."""

from __future__ import annotations

import base64
import binascii
import io
import json
import time

from pydantic import BaseModel, ConfigDict

from dreamcli.errors import InputError
from dreamcli.requests import shown
from dreamcli.schedulers import SCHEDULERS

# A1111's own defaults, as its API and clients (webuiapi) send them: a field left at one of these asks for
# nothing, so it draws no warning; any other value of a field dream does not support is named in `info`.
UNSUPPORTED_DEFAULTS = {
    "styles": [], "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "eta": 1.0,
    "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "script_name": None, "script_args": [],
    "alwayson_scripts": {}, "firstphase_width": 0, "firstphase_height": 0, "hr_resize_x": 0, "hr_resize_y": 0,
    "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "resize_mode": 0, "image_cfg_scale": 1.5, "inpainting_fill": 0,
    "inpaint_full_res": True, "inpaint_full_res_padding": 0, "initial_noise_multiplier": 1,
    "include_init_images": False, "refiner_checkpoint": None, "refiner_switch_at": 0, "disable_extra_networks": False,
    "comments": {}, "enable_hr": False, "hr_upscaler": None, "hr_scale": 2.0, "hr_second_pass_steps": 0,
    "denoising_strength": None, "latent_mask": None, "force_task_id": None, "infotext": None,
    "override_settings_restore_afterwards": True, "send_images": True, "save_images": False,
}
# Settings in override_settings that dream reads; every other key is named in the warnings.
OVERRIDE_KEYS = ("sd_model_checkpoint",)
# A1111 names of the (newer) separate `scheduler` field that pick a variant of a sampler.
SCHEDULER_SUFFIXES = {"karras": "Karras", "beta": "Beta"}


class A1111Body(BaseModel):
    """Fields A1111's txt2img and img2img share. Every field is optional: what a client leaves out takes the
    model's preset value. Unknown fields are kept, so that they can be named in the warnings."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None  # -1: random
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older name of sampler_name
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    denoising_strength: float | None = None
    override_settings: dict | None = None
    send_images: bool = True
    save_images: bool = False


class Txt2ImgBody(A1111Body):
    """POST /sdapi/v1/txt2img."""

    enable_hr: bool = False
    hr_scale: float | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = None


class Img2ImgBody(A1111Body):
    """POST /sdapi/v1/img2img: init_images (base64) and, for inpainting, a mask (white: repaint)."""

    init_images: list[str] | None = None
    mask: str | None = None
    mask_blur: float | None = None
    inpainting_mask_invert: int = 0


def warnings_for(body: A1111Body) -> list[str]:
    """What the request asked for that dream ignores: unknown fields, unsupported values, override keys."""
    notes = []
    extra = body.model_extra or {}
    for key, value in extra.items():
        if key in UNSUPPORTED_DEFAULTS and _same(value, UNSUPPORTED_DEFAULTS[key]):
            continue
        known = "is not supported by dream" if key in UNSUPPORTED_DEFAULTS else "is unknown"
        notes.append(f"{key} {known}: ignored")
    for key in (body.override_settings or {}):
        if key not in OVERRIDE_KEYS:
            notes.append(f"override_settings.{key} is not supported by dream: ignored")
    return notes


def _same(value, default) -> bool:
    if value == default:
        return True
    return default is None and value in ("", 0, "None")  # clients send "" or 0 for "unset"


def model_name(body: A1111Body) -> str | None:
    """The model a request names in override_settings (None: the current one)."""
    name = (body.override_settings or {}).get("sd_model_checkpoint")
    return name if name not in (None, "") else None


def gen_settings(body: Txt2ImgBody | Img2ImgBody, model_settings: dict, img2img: bool = False) -> dict:
    """Merged settings (dream's short names) for a request: the model's defaults, then what the request sets."""
    settings = dict(model_settings)
    for key, value in (("prompt", body.prompt), ("negative", body.negative_prompt), ("steps", body.steps),
                       ("guidance", body.cfg_scale), ("width", body.width), ("height", body.height)):
        if value is not None:
            settings[key] = value
    if img2img:  # the picture's shape decides the working size unless the request sets one
        for key, value in (("width", body.width), ("height", body.height)):
            if value is None:
                settings.pop(key, None)
    seed = body.seed
    settings["seed"] = None if seed is None or seed < 0 else seed
    for name, value in (("batch_size", body.batch_size), ("n_iter", body.n_iter)):
        if value < 1:
            raise InputError(f"{name} {value} is too small: use 1 or more")
    settings["num_images"] = body.batch_size * body.n_iter
    settings["batch_size"] = body.batch_size
    settings["hires"] = 0  # a preset's hires fix applies only when the request enables it, as in A1111
    if isinstance(body, Txt2ImgBody) and body.enable_hr:
        settings["hires"] = body.hr_scale if body.hr_scale is not None else 2.0
        if body.hr_upscaler:
            settings["hires_upscaler"] = body.hr_upscaler
        if body.denoising_strength is not None:
            settings["hires_strength"] = body.denoising_strength
        if body.hr_second_pass_steps:
            settings["hires_steps"] = body.hr_second_pass_steps
    return settings


def sampler_names() -> list[dict]:
    """GET /sdapi/v1/samplers: A1111's names, each with dream's scheduler names as aliases."""
    out: dict[str, list[str]] = {}
    for friendly, spec in SCHEDULERS.items():
        out.setdefault(spec.a1111_name, []).append(friendly)
    return [{"name": name, "aliases": aliases, "options": {}} for name, aliases in out.items()]


def scheduler_for(sampler: str | None, scheduler: str | None, family) -> tuple[str | None, list[str]]:
    """dream's scheduler name for an A1111 sampler (and its optional `scheduler` field) on a model family.

    None keeps the model's own (also for a known sampler that does not fit the family, with a note); an unknown
    sampler is refused (A1111 answers it with an error too).
    """
    notes = []
    if sampler in (None, "") or sampler.lower() in ("automatic", "default"):
        return None, notes
    suffix = SCHEDULER_SUFFIXES.get((scheduler or "").strip().lower())
    if scheduler and scheduler.strip().lower() not in ("automatic", "", *SCHEDULER_SUFFIXES) and suffix is None:
        notes.append(f"scheduler {scheduler} is not supported by dream: the sampler's own schedule is used")
    wanted = [f"{sampler} {suffix}", sampler] if suffix else [sampler]
    for name in wanted:
        if name in SCHEDULERS and SCHEDULERS[name].fits(family):  # dream's own names work too
            return name, notes
        fitting = [f for f, spec in SCHEDULERS.items() if spec.a1111_name.lower() == name.lower() and spec.fits(family)]
        if fitting:
            if suffix and name == sampler:
                notes.append(f"scheduler {scheduler} has no {sampler} variant in dream: plain {sampler} is used")
            return fitting[0], notes
    usable = sorted({spec.a1111_name for spec in SCHEDULERS.values() if spec.fits(family)})
    if sampler in SCHEDULERS or any(spec.a1111_name.lower() == sampler.lower() for spec in SCHEDULERS.values()):
        # A name clients send by default ("Euler a") on a model it cannot run (SD3, Flux): the model's own sampler.
        notes.append(f"sampler {sampler} does not fit {family.label} models: the model's own sampler is used "
                     f"(these fit: {', '.join(usable)})")
        return None, notes
    raise InputError(f"sampler {shown(sampler)} is unknown or does not fit {family.label} models: use one of "
                     f"{', '.join(usable)}")


def decode_image(text, what: str, limit: int | None = None):
    """A base64 picture (with or without a data: URL prefix) as a PIL image, checked against the pixel limit."""
    from PIL import Image

    from dreamcli.io.images import check_picture_size

    if not isinstance(text, str) or not text:
        raise InputError(f"{what} must be a base64-encoded picture, got {shown(text)}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=False)
        image = Image.open(io.BytesIO(data))
        check_picture_size(image.size, f"the {what}", limit)
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{what} is not a readable base64 picture ({type(e).__name__}): send PNG or JPEG bytes "
                         "in base64") from None
    return image


def encode_png(result) -> str:
    """A result's picture as base64 PNG bytes carrying the same metadata `dream gen` writes."""
    from dreamcli.io.metadata import save_options

    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG", **save_options(result.record, "png"))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def response(body: A1111Body, results: list, warnings: list[str]) -> dict:
    """A1111's response: images (base64 PNG), parameters (the request as read) and info (a JSON string)."""
    from dreamcli.io.metadata import a1111_parameters

    records = [r.record for r in results]
    first = records[0] if records else {}
    req = first.get("request", {})
    info = {
        "prompt": body.prompt, "all_prompts": [r["request"]["prompt"] for r in records],
        "negative_prompt": req.get("negative_prompt", body.negative_prompt or ""),
        "all_negative_prompts": [r["request"].get("negative_prompt", "") for r in records],
        "seed": first.get("seed", body.seed), "all_seeds": [r["seed"] for r in records],
        "subseed": -1, "all_subseeds": [-1] * len(records), "subseed_strength": 0,
        "width": first.get("width", body.width), "height": first.get("height", body.height),
        "sampler_name": first.get("sampler", body.sampler_name), "cfg_scale": req.get("guidance_scale", body.cfg_scale),
        "steps": req.get("num_inference_steps", body.steps), "batch_size": body.batch_size, "n_iter": body.n_iter,
        "sd_model_name": first.get("model_name"), "sd_model_hash": first.get("model_hash"),
        "infotexts": [a1111_parameters(r) for r in records], "index_of_first_image": 0,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "warnings": warnings, "version": "dreamcli",
    }
    images = [encode_png(r) for r in results] if body.send_images else []
    return {"images": images, "parameters": body.model_dump(exclude={"init_images", "mask"}), "info": json.dumps(info)}

"""Hires fix (`dream gen --hires SCALE`): enlarge a first-pass picture or its latents, then redraw it with img2img.

A model draws whole scenes well only near the size it was trained at; drawn larger straight away it repeats
subjects. A1111's answer, kept here: draw at the model's size, enlarge, then let the same model's img2img
pipeline add detail at a partial strength.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from dreamcli.errors import InputError
from dreamcli.requests import MAX_SIDE, GenRequest

# img2img pipelines that take latents as `image` and start from them, skipping their VAE encoder (diffusers
# 0.42.1: each prepare_latents uses an `image` with the VAE's latent channels as is; Flux's takes them unpacked).
# Kandinsky 2.2's img2img always encodes `image` through MoVQ, so latents cannot go in there.
LATENT_INPUT_PIPELINES = frozenset({
    "StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusion3Img2ImgPipeline",
    "FluxImg2ImgPipeline", "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
})


@dataclass
class HiresPass:
    """What one image's second pass was: its picture, and the upscaler that really ran (recorded)."""

    image: Image.Image
    upscaler: str
    note: str | None = None  # for the user, e.g. why the latent upscaler gave way to Lanczos


def hires_steps(request: GenRequest) -> int:
    """The second pass's steps before strength (A1111's Hires steps; 0 / None there means the first pass's)."""
    return request.hires_steps or request.num_inference_steps


def hires_size(loaded, width: int, height: int, scale: float) -> tuple[int, int]:
    """The final (width, height): the first pass's times `scale`, to the nearest size this model draws exactly."""
    step = loaded.spec.size_multiple(loaded.pipe)
    return tuple(max(step, round(side * scale / step) * step) for side in (width, height))


def second_pass_task(request: GenRequest, loaded) -> str:
    """The pipeline task of the second pass: the ControlNet img2img one when the request steers and the family
    has it (SD3 has none: its second pass runs unsteered, with a note)."""
    from dreamcli.families import CONTROL

    controlled = CONTROL + "img2img"
    return controlled if request.control and controlled in loaded.spec.pipelines else "img2img"


def latent_problem(loaded, task: str = "img2img") -> str | None:
    """Why the latent upscaler cannot feed this model's img2img pipeline (None when it can)."""
    name = loaded.spec.pipelines.get(task)
    if name in LATENT_INPUT_PIPELINES:
        return None
    return f"its {name} encodes every picture itself and takes no latents"


def upscaler_for(request: GenRequest, loaded) -> tuple[str, str | None]:
    """(upscaler that runs, note): a model whose img2img takes no latents gets Lanczos, and a line saying so."""
    if request.hires_upscaler != "latent":
        return request.hires_upscaler, None
    problem = latent_problem(loaded, second_pass_task(request, loaded))
    if problem is None:
        return "latent", None
    return "lanczos", f"--hires-upscaler latent does not fit {loaded.spec.label} models ({problem}): used lanczos"


def check_hires(request: GenRequest, width: int, height: int) -> None:
    """What only the loaded model can tell about a hires request: that it has an img2img pipeline, the final
    size in its size blocks within the limits, and the second pass's steps on its scheduler."""
    from dreamcli.engine import load_model, pipeline_for
    from dreamcli.limits import check_pixels
    from dreamcli.schedulers import check_steps

    loaded = load_model(request.model)
    if "img2img" not in loaded.spec.pipelines:
        raise InputError(f"--hires redraws the picture with img2img, which {loaded.spec.label} models have no "
                         "pipeline for in diffusers: leave out --hires")
    final = hires_size(loaded, width, height, request.hires_scale)
    largest = min(MAX_SIDE, _largest_side(loaded))
    if max(final) > largest:
        raise InputError(f"--hires {request.hires_scale:g} makes {final[0]}x{final[1]}, more than {loaded.spec.label} "
                         f"models draw: use at most {largest} px a side")
    check_pixels(*final, "the hires image")
    pipe, _ = pipeline_for("img2img", request.model)
    check_steps(pipe.scheduler.config, hires_steps(request))


def _largest_side(loaded) -> int:
    """The longest side a model can draw (its family knows; SD3's position grid bounds it)."""
    return loaded.spec.max_side(loaded.pipe) or MAX_SIDE


def upscale_latents(pipe, latents, size: tuple[int, int], final: tuple[int, int]):
    """One image's first-pass latents enlarged to the final size, bilinear as A1111's "Latent" upscaler does.

    Packed latents (Flux returns 2x2 patches as tokens) are unpacked first: its img2img takes them image-shaped.
    """
    import torch.nn.functional as F

    if latents.ndim == 3:
        latents = pipe._unpack_latents(latents, size[1], size[0], pipe.vae_scale_factor)
    factor = int(pipe.vae_scale_factor)
    target = (final[1] // factor, final[0] // factor)
    return F.interpolate(latents.float(), size=target, mode="bilinear", antialias=False).to(latents.dtype)


def hires_fix(request: GenRequest, first_pipe, latents, picture: Image.Image | None, size: tuple[int, int],
              seed: int, counter) -> HiresPass:
    """The second pass for one image: enlarge `latents` (its own, batch of one) or `picture`, then img2img.

    `counter` is a StepCounter (diffusers' callback_on_step_end); the noise comes from a seed of its own, derived
    from the image's, so the pass is reproducible alone.
    """
    from dreamcli.engine import decode_latents, pipeline_for
    from dreamcli.tasks.image_common import cpu_generator, fit_call, latents_of, sub_seed

    pipe, loaded = pipeline_for("img2img", request.model)
    final = hires_size(loaded, size[0], size[1], request.hires_scale)
    upscaler, note = upscaler_for(request, loaded)
    control = {}
    if second_pass_task(request, loaded) != "img2img":  # the ControlNets steer the second pass too
        from dreamcli.tasks.control import steer

        pipe, loaded, control, _ = steer("img2img", request, final)
    elif request.control:
        unsteered = f"{loaded.spec.label} models have no ControlNet img2img pipeline: the hires pass ran unsteered"
        note = f"{note}; {unsteered}" if note else unsteered
    if upscaler == "latent":
        source = upscale_latents(first_pipe, latents, size, final)
    elif upscaler == "lanczos":
        source = picture.resize(final, Image.Resampling.LANCZOS)
    else:  # an upscaler model (A1111's R-ESRGAN 4x+ and the like), on the same device as the diffusion model
        from dreamcli import upscalers

        options = request.model
        model = upscalers.load(upscaler, loaded.device, options.dtype, options.allow_unsafe_pickle)
        source = upscalers.enlarge(model, picture, final)
    steps = hires_steps(request)
    kwargs = {
        "request": request,  # for fit_call: which settings the user changed
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "image": source,
        "strength": request.hires_strength,
        "num_inference_steps": steps,
        "guidance_scale": request.guidance_scale,
        "generator": cpu_generator(sub_seed(seed, 1)),
        "width": final[0],
        "height": final[1],
    }
    if _takes(pipe, "guidance_rescale"):  # SD's img2img has no rescale: its second pass runs plain CFG
        kwargs["guidance_rescale"] = request.guidance_rescale
    kwargs.update(loaded.spec.progress(counter, steps), **control)
    out = latents_of(pipe, loaded, fit_call(pipe, loaded, kwargs))
    image = decode_latents(loaded, pipe, out, final[0], final[1])[0]
    return HiresPass(image, upscaler, note)


def _takes(pipe, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(pipe.__call__).parameters


class TwoPassProgress:
    """Progress over an image's two passes: its batch's first pass, then its own hires pass.

    Each pass's StepCounter reports (done, total) of that pass; this adds them up. The hires pass's count is
    estimated (steps x strength) until it starts and the pipeline says how many it really runs.
    """

    def __init__(self, on_step, request: GenRequest):
        self.on_step = on_step
        self.first = request.num_inference_steps
        self.second = max(1, int(hires_steps(request) * request.hires_strength))

    def first_pass(self, done: int, total: int) -> None:
        """on_step of the first pass's counter."""
        self.first = total
        if self.on_step is not None:
            self.on_step(done, total + self.second)

    def second_pass(self, done: int, total: int) -> None:
        """on_step of a hires pass's counter: the first pass counts as done."""
        self.second = total
        if self.on_step is not None:
            self.on_step(self.first + done, self.first + total)

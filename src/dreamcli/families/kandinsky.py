"""Kandinsky 2.2 (unCLIP): a prior turns text into a CLIP image embedding, a UNet decoder draws from it."""

from __future__ import annotations

from dreamcli.families import UNET, Family

CLASSES = frozenset({
    "KandinskyV22CombinedPipeline", "KandinskyV22Pipeline",  # the decoder folder names its prior in README.md
    "KandinskyV22InpaintCombinedPipeline", "KandinskyV22InpaintPipeline",
})
INPAINT_MODEL = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
# The prior's steps: diffusers' default, cheap next to the decoder's (a 1-D transformer over one embedding).
PRIOR_STEPS = 25


def call_args(pipe, kwargs: dict) -> dict:
    """The prior runs its own steps before the decoder's. Kandinsky's img2img pipeline hands width and height
    to its resize helper in the wrong order (diffusers 0.42, pipeline_kandinsky2_2_img2img.py), so a wide picture
    came out tall: it gets them swapped, which draws at the size asked."""
    extra = {"prior_num_inference_steps": PRIOR_STEPS}
    if type(pipe).__name__ == "KandinskyV22Img2ImgCombinedPipeline" and "width" in kwargs:
        extra.update(width=kwargs["height"], height=kwargs["width"])
    return extra


def progress(counter, steps: int) -> dict:
    """The combined pipelines report prior and decoder steps through two callbacks; count both."""
    counter.steps_per_call = PRIOR_STEPS + steps
    return {"prior_callback_on_step_end": counter, "callback_on_step_end": counter}


def task_problem(task: str, pipe) -> str | None:
    """The decoder is either a text/image one (4 input channels) or an inpainting one (9: latents, mask and
    masked picture); each does only its own tasks."""
    inpainter = pipe.unet.config.in_channels == 9
    if task == "inpaint" and not inpainter:
        return (f"Kandinsky 2.2 inpaints with its own decoder, not this one: use -m {INPAINT_MODEL} (or the "
                "kandinsky22 preset, which names it)")
    if task != "inpaint" and inpainter:
        return "this Kandinsky 2.2 decoder is the inpainting one: use it with dream inpaint or outpaint only"
    return None


def native(pipe) -> int:
    """The decoder's latent size times MoVQ's scale (512 px for the real model, whose pipelines default to it)."""
    return int(pipe.unet.config.sample_size or 64) * 2 ** (len(pipe.movq.config.block_out_channels) - 1)


def decode(pipe, movq, latents, width: int, height: int):
    """The decoder's latents go through the MoVQ autoencoder, unquantised (as the pipeline does)."""
    return movq.decode(latents.to(movq.dtype), force_not_quantize=True).sample


FAMILY = Family(
    name="kandinsky",
    label="Kandinsky 2.2",
    index_classes=CLASSES,
    pipelines={
        "text2img": "KandinskyV22CombinedPipeline",
        "img2img": "KandinskyV22Img2ImgCombinedPipeline",
        "inpaint": "KandinskyV22InpaintCombinedPipeline",
    },
    config_repos={"": "kandinsky-community/kandinsky-2-2-decoder"},
    native_size=512,
    autoencoder="movq",
    skips_input_scaling=True,
    lora="peft",
    lora_kind=UNET,
    single_file=False,  # diffusers has no single-file loader for Kandinsky
    claims_folder=lambda index, folder: index.get("_class_name") in CLASSES,
    call_args=call_args,
    decode=decode,
    native=native,
    # Its pipelines round sizes up to whole MoVQ blocks squared (64 px for the real model).
    size_multiple=lambda pipe: (2 ** (len(pipe.movq.config.block_out_channels) - 1)) ** 2,
    progress=progress,
    task_problem=task_problem,
)

"""The library API: one pure function per task (no printing, no exiting)."""

from dreamcli.tasks.colorize import colorize, iter_colorize
from dreamcli.tasks.generate import GenResult, generate, iter_generate, iter_generate_many
from dreamcli.tasks.image_common import ImageResult
from dreamcli.tasks.img2img import img2img, iter_img2img
from dreamcli.tasks.inpaint import inpaint, iter_inpaint
from dreamcli.tasks.outpaint import iter_outpaint, outpaint
from dreamcli.tasks.restore import iter_restore, restore
from dreamcli.tasks.upscale import iter_upscale, upscale

__all__ = [
    "GenResult", "generate", "iter_generate", "iter_generate_many",
    "ImageResult", "inpaint", "iter_inpaint", "outpaint", "iter_outpaint",
    "colorize", "iter_colorize", "upscale", "iter_upscale", "img2img", "iter_img2img",
    "restore", "iter_restore",
]

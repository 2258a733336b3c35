"""dreamcli: turn prompts and images into images with Stable Diffusion, from a shell."""

__version__ = "0.1.0"

"""Pure image operations behind the image-to-image tasks (no torch, no diffusers)."""

"""The built-in demo model: a small Stable Diffusion trained by dreamcli on a synthetic world of shapes."""

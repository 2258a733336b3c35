"""The library API: one pure function per task (no printing, no exiting)."""

from dreamcli.tasks.generate import GenResult, generate, iter_generate

__all__ = ["GenResult", "generate", "iter_generate"]

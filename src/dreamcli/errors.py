"""Errors whose message is shown to the user as is, each kind with its exit code."""


class DreamError(Exception):
    """A failure the user can act on; the CLI prints the message on one red line."""

    exit_code = 1


class InputError(DreamError):
    """Bad usage or bad input: a value the user gave, and how to fix it."""

    exit_code = 2


class ModelNotFound(InputError):
    """A model reference that resolves to nothing we can load."""


class UnsafeCheckpoint(InputError):
    """A pickle checkpoint that could run code when loaded."""


class CorruptCheckpoint(InputError):
    """A weights file that cannot be read (truncated, not safetensors, ...)."""


class LoraMismatch(InputError):
    """A LoRA file whose weights do not fit the loaded model."""


class DemoModelMissing(InputError):
    """The built-in demo model has not been built into this install."""


class IncompatibleLibraries(DreamError):
    """Installed libraries whose versions do not work together: the machine's fault, not the input's."""


class Note(UserWarning):
    """Something the user should know about a result that still went ahead (the CLI prints it as a note)."""

"""The models a request may name: presets, the model the server started with, and files in --models-dir folders.

A request names a model by its title, never by a path: no request can make the server read or load a file
the person who started it did not offer.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dreamcli.errors import InputError
from dreamcli.requests import shown

WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HASH_TAIL = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")  # A1111 titles end with " [hash]"


@dataclass(frozen=True)
class KnownModel:
    """One model a request may name: the title clients send, what the engine loads, and its default settings."""

    title: str
    ref: str
    settings: dict = field(default_factory=dict, compare=False)
    kind: str = "preset"  # "preset" | "file" | "folder" | "started": where it came from

    @property
    def filename(self) -> str:
        """What A1111 lists as the file: the path for files, the reference for presets."""
        return self.ref


class ModelTable:
    """Known models by title, and the current one (A1111's sd_model_checkpoint)."""

    def __init__(self, started: KnownModel, models_dirs: list[Path], hardware: dict, allow_unsafe_pickle: bool):
        self.started = started
        self.models_dirs = list(models_dirs)
        self.hardware = dict(hardware)  # device, dtype and memory settings every model is loaded with
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._lock = threading.Lock()
        self._models: dict[str, KnownModel] = {}
        self.current = started.title
        self.refresh()

    def refresh(self) -> None:
        """Read the presets and the model folders again (A1111's /refresh-checkpoints)."""
        from dreamcli.config import preset_names

        models = {self.started.title: self.started}
        for name in preset_names():
            models.setdefault(name, KnownModel(name, "", kind="preset"))  # settings read when first used
        for folder in self.models_dirs:
            for path in sorted(folder.iterdir()) if folder.is_dir() else ():
                suffix = path.suffix.lower()
                usable = suffix in WEIGHT_SUFFIXES or (self.allow_unsafe_pickle and suffix in PICKLE_SUFFIXES)
                if path.is_file() and usable:
                    models.setdefault(path.name, KnownModel(path.name, str(path.resolve()), kind="file"))
                elif path.is_dir() and (path / "model_index.json").is_file():
                    models.setdefault(path.name, KnownModel(path.name, str(path.resolve()), kind="folder"))
        with self._lock:
            self._models = models

    def entries(self) -> dict[str, KnownModel]:
        """Every known model by title (presets' settings not yet read)."""
        with self._lock:
            return dict(self._models)

    def titles(self) -> list[str]:
        """Every title, the current model first."""
        with self._lock:
            names = list(self._models)
        return [self.current] + sorted(n for n in names if n != self.current)

    def lookup(self, name) -> KnownModel:
        """The model a request names (a title, with or without its extension or A1111's " [hash]")."""
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"model name must be text naming a known model, got {shown(name)}")
        text = _HASH_TAIL.sub("", name.strip())
        if "/" in text or "\\" in text or "\x00" in text or text in (".", ".."):
            raise InputError(f"model {shown(name)} looks like a path: this server loads only the models it lists "
                             "at /sdapi/v1/sd-models (presets and its --models-dir folders), by name")
        with self._lock:
            found = self._models.get(text) or next(
                (m for m in self._models.values() if m.kind == "file" and Path(m.title).stem == text), None)
        if found is None:
            raise InputError(f"unknown model {shown(name)}: use one of {', '.join(self.titles()[:20])} "
                             "(see /sdapi/v1/sd-models)")
        return self._with_settings(found)

    def select(self, name) -> KnownModel:
        """Make a model the current one (A1111's POST /options with sd_model_checkpoint)."""
        model = self.lookup(name)
        self.current = model.title
        return model

    def get_current(self) -> KnownModel:
        """The model requests use when they name none."""
        return self.lookup(self.current)

    def _with_settings(self, model: KnownModel) -> KnownModel:
        """The model with its merged settings (a preset's, or the user config's for a file), and the server's
        hardware settings on top."""
        if model.settings:
            return model
        from dreamcli.config import merge_settings

        flags = {"preset": model.title} if model.kind == "preset" else {"model": model.ref}
        settings, _ = merge_settings(flags)
        settings.update({k: v for k, v in self.hardware.items() if v is not None})
        ref = settings.get("model") or ""
        if model.kind != "preset" and ref != model.ref:  # a config-file preset must not swap the file offered
            settings["model"] = ref = model.ref
        filled = KnownModel(model.title, ref, settings, model.kind)
        with self._lock:
            self._models[model.title] = filled
        return filled

"""GAN and transformer upscalers (Real-ESRGAN, UltraSharp, SwinIR, HAT, DAT, ...), loaded through spandrel.

spandrel reads the architecture and its sizes off a state dict, so one loader serves every such file. Here:
naming (a file, or a name the user gave one), the safety rules for pickles, the loaded-model cache, and running
a model over a picture tile by tile so that memory stays bounded whatever the picture's size.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreamcli.errors import DreamError, InputError

SAFE_SUFFIXES = (".safetensors", ".pth")  # .pth goes through spandrel's restricted unpickler: tensors only
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin")  # full pickles (or TorchScript): code can run on load
NAMED_FOLDER = "upscalers"  # $DREAMCLI_HOME/upscalers/NAME.pth names an upscaler NAME
DEFAULT_TILE = 256  # input pixels per tile side: a 4x model's tile output is 1024 px, a few hundred MB at most
WHOLE_PICTURE_SIDE = 512  # models that advise against tiling get inputs up to 512x512 whole, and tiles this big
WHOLE_PICTURE_PIXELS = WHOLE_PICTURE_SIDE**2
_CACHE: dict[tuple, Upscaler] = {}
# Well-known upscalers on the Hugging Face hub, by the names people use for them; fetched once, when first used.
BUILTIN = {
    "RealESRGAN_x2": "ai-forever/Real-ESRGAN/RealESRGAN_x2.pth",
    "RealESRGAN_x4": "ai-forever/Real-ESRGAN/RealESRGAN_x4.pth",
    "RealESRGAN_x8": "ai-forever/Real-ESRGAN/RealESRGAN_x8.pth",
    "4x-UltraSharp": "lokCX/4x-Ultrasharp/4x-UltraSharp.pth",
}


@dataclass
class Upscaler:
    """A loaded upscaler: the name it goes by, its file, and spandrel's descriptor of the model."""

    name: str
    path: Path
    model: object  # spandrel.ImageModelDescriptor
    device: str
    dtype: str

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def architecture(self) -> str:
        return self.model.architecture.name

    def file_hash(self) -> str:
        """A1111's short hash of the file (the first 10 hex digits of its SHA-256)."""
        from dreamcli.checkpoints import file_sha256

        return file_sha256(self.path)[:10]


# --- naming -------------------------------------------------------------------------------------------------


def named_files() -> dict[str, Path]:
    """The upscalers in $DREAMCLI_HOME/upscalers/, by file stem (what `--upscaler NAME` finds)."""
    folder = named_folder()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES}


def available() -> dict[str, str]:
    """Every upscaler name dream knows, and its file: the built-in hub names, then the `[upscalers]` tables of
    presets and the user config, then the files in $DREAMCLI_HOME/upscalers/ (later ones win)."""
    from dreamcli.config import upscaler_tables

    names = dict(BUILTIN)
    names.update(upscaler_tables())
    names.update({name: str(path) for name, path in named_files().items()})
    return names


def is_file_ref(ref: str) -> bool:
    """True when `ref` names a file rather than an upscaler name (it has a suffix an upscaler file has)."""
    return Path(ref).suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES


def resolve(ref: str) -> tuple[str, Path]:
    """(the name recorded, the file) for `--upscaler REF`: a file path, or a name (of a file or a hub file)."""
    names = available()
    lowered = {k.lower(): k for k in names}
    if ref in names or ref.lower() in lowered:
        name = ref if ref in names else lowered[ref.lower()]
        return name, _file_of(names[name], name)
    path = Path(ref).expanduser()
    if is_file_ref(ref) and path.is_file():
        return path.stem, path.resolve()
    if is_file_ref(ref):
        raise InputError(f"upscaler file {ref} does not exist: check the path")
    known = ", ".join(sorted(names))
    raise InputError(f"unknown upscaler {ref!r}: give a .pth or .safetensors file, or one of {known} "
                     f"(files in {named_folder()} are named by their file name)")


def named_folder() -> Path:
    """$DREAMCLI_HOME/upscalers: a file there is an upscaler named by its file name."""
    from dreamcli.config import dreamcli_home

    return dreamcli_home() / NAMED_FOLDER


def _file_of(ref: str, name: str) -> Path:
    """The file a name stands for: a path, or `owner/repo/file` on the Hugging Face hub."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    parts = ref.split("/")
    if not path.exists() and len(parts) >= 3 and not ref.startswith(("/", ".", "~")):
        return _hub_file("/".join(parts[:2]), "/".join(parts[2:]), name)
    raise InputError(f"upscaler {name!r} names {ref}, which does not exist: fix the name's entry or the file")


def _hub_file(repo: str, filename: str, name: str) -> Path:
    """A file from the Hugging Face hub (the local cache first; the network only when it is not there)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # offline mode, no network, no such file: all end the same way for the user
        raise DreamError(f"upscaler {name!r}: cannot download {filename} from {repo} ({type(e).__name__}): "
                         "check the name and your connection, or put the file in "
                         f"{named_folder()}") from None


# --- loading ------------------------------------------------------------------------------------------------


def _torchvision_usable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or PyPI's build beside a CPU-only torch: "operator torchvision::nms does not exist"
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        return False
    return True


def _stand_in_torchvision() -> list[str]:
    """Let spandrel import without torchvision.

    spandrel imports torchvision at import time for two architectures only (LaMa inpainting and RestoreFormer face
    restoration, neither an upscaler), and PyPI's torchvision cannot load beside the CPU-only torch wheel. So when
    torchvision cannot be imported, a module of that name stands in while spandrel imports (and only then: the
    caller takes it out again), with functions that say so when called: every upscaler architecture works, and
    those two fail in one line instead of breaking every import. Returns the module names it put in place.
    """
    def missing(*_args, **_kwargs):
        raise DreamError("this model architecture needs torchvision, which cannot be imported here: "
                         "install a torchvision built for your torch (pip install torchvision)")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.rotate = functional.normalize = missing
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    modules = {"torchvision": root, "torchvision.transforms": transforms,
               "torchvision.transforms.functional": functional}
    sys.modules.update(modules)
    return list(modules)


def import_spandrel():
    """spandrel, imported (with the torchvision stand-in where torchvision cannot load)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import importlib.util

        found = importlib.util.find_spec("spandrel") is not None
    except ValueError:
        found = False
    if not found:
        raise DreamError("--upscaler needs spandrel, which is not installed: "
                         "pip install --no-deps spandrel einops (or run scripts/setup.sh)")
    if _torchvision_usable():
        import spandrel

        return spandrel
    stand_ins = _stand_in_torchvision()
    try:
        import spandrel
    finally:  # spandrel holds the functions it took; others asking for torchvision must find none, as before
        for key in stand_ins:
            sys.modules.pop(key, None)
    return spandrel


def load(ref: str, device: str = "auto", dtype: str = "auto", allow_unsafe_pickle: bool = False) -> Upscaler:
    """Load an upscaler by name or file, once per process (later calls get the cached one)."""
    from dreamcli.engine import pick_device

    name, path = resolve(ref)
    device = pick_device(device)
    key = (path, device, dtype)
    if key in _CACHE:
        return _CACHE[key]
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        from dreamcli.checkpoints import refuse_pickle

        refuse_pickle(path, allow_unsafe_pickle, "upscaler ")
    model = _read_model(path, name)
    model.to(device).eval()
    chosen = _dtype_for(model, device, dtype)
    if chosen != "fp32":
        import torch

        model.to(getattr(torch, TORCH_DTYPES[chosen]))
    _CACHE[key] = Upscaler(name, path, model, device, chosen)
    return _CACHE[key]


def _read_model(path: Path, name: str):
    import pickle

    spandrel = import_spandrel()
    loader = spandrel.ModelLoader()
    try:
        state = loader.load_state_dict_from_file(path)
    except pickle.UnpicklingError as e:
        raise InputError(f"upscaler {path.name} holds more than tensors ({e}), so it was not loaded: "
                         "use a .safetensors version of it") from None
    except Exception as e:  # a truncated or foreign file fails inside torch/safetensors in many ways
        raise InputError(f"upscaler {path.name} cannot be read ({type(e).__name__}: {str(e)[:120]}): "
                         "check that the file is complete and is a model file") from None
    try:
        model = loader.load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise InputError(f"upscaler {path.name} is not an architecture spandrel knows: use an ESRGAN, "
                         "Real-ESRGAN, Compact, SwinIR, HAT, DAT or similar upscaler file") from None
    except Exception as e:  # recognised, but its tensors do not fit the architecture's layout
        raise InputError(f"upscaler {path.name} looks like a known architecture but does not load "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]}): the file may be damaged") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in ("SR", "Restoration"):
        kind = getattr(model, "purpose", type(model).__name__)
        raise InputError(f"upscaler {path.name} is a {model.architecture.name} model for {kind}, not an upscaler: "
                         "use a super-resolution model")
    if model.input_channels != 3 or model.output_channels != 3:
        raise InputError(f"upscaler {path.name} works on {model.input_channels}-channel pictures: "
                         "use a colour (3-channel) upscaler")
    return model


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _dtype_for(model, device: str, dtype: str) -> str:
    """fp32 on a CPU; on a GPU the half type the model supports (bf16 first where the GPU has it)."""
    if dtype in TORCH_DTYPES:
        if dtype == "fp16" and not model.supports_half or dtype == "bf16" and not model.supports_bfloat16:
            return "fp32"  # the architecture breaks in that type (spandrel knows which do)
        return dtype
    if not device.startswith("cuda"):
        return "fp32"
    import torch

    if model.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16" if model.supports_half else "fp32"


# --- running ------------------------------------------------------------------------------------------------


def tile_plan(upscaler: Upscaler, size: tuple[int, int], tile: int | None) -> int:
    """The input tile side: the model's advice first (a model that tiles itself gets the whole picture)."""
    spandrel = import_spandrel()
    if upscaler.model.tiling == spandrel.ModelTiling.INTERNAL:
        return max(size)
    if tile is None and upscaler.model.tiling == spandrel.ModelTiling.DISCOURAGED:
        # Seams show with such models (SwinIR, HAT, ...): whole pictures up to a budget, large tiles beyond it.
        return max(size) if size[0] * size[1] <= WHOLE_PICTURE_PIXELS else WHOLE_PICTURE_SIDE
    return tile or DEFAULT_TILE


def enlarge(upscaler: Upscaler, image: Image.Image, target: tuple[int, int], tile: int | None = None,
            overlap: int | None = None, on_tile=None) -> Image.Image:
    """`image` (RGB) enlarged to `target` by the model, as many passes as it takes, then Lanczos down to size.

    A 4x model asked for 2x runs once and the 4x result is reduced (sharper than a 2x resize of the input); a 2x
    model asked for 4x runs twice. `on_tile(done, total)` is called after each tile of each pass.
    """
    passes = 1
    while image.width * upscaler.scale ** passes < target[0] or image.height * upscaler.scale ** passes < target[1]:
        passes += 1
    current = image.convert("RGB")
    for _ in range(passes):
        side = tile_plan(upscaler, current.size, tile)
        current = _one_pass(upscaler, current, side, side // 8 if overlap is None else overlap, on_tile)
    if current.size != target:
        current = current.resize(target, Image.Resampling.LANCZOS)
    return current


def _one_pass(upscaler: Upscaler, image: Image.Image, tile: int, overlap: int, on_tile) -> Image.Image:
    import numpy as np
    import torch

    from dreamcli.imageops.tiles import tile_boxes

    scale = upscaler.scale
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    out = torch.zeros(3, image.height * scale, image.width * scale)
    weight = torch.zeros(1, image.height * scale, image.width * scale)
    boxes = tile_boxes(image.size, (tile, tile), min(overlap, tile - 1))
    for index, (left, top, right, bottom) in enumerate(boxes):
        piece = _run(upscaler, x[:, top:bottom, left:right])
        feather = _feather(piece.shape[1:], overlap * scale,
                           (left > 0, top > 0, right < image.width, bottom < image.height))
        region = (slice(None), slice(top * scale, bottom * scale), slice(left * scale, right * scale))
        out[region] += piece * feather
        weight[region] += feather
        if on_tile is not None:
            on_tile(index + 1, len(boxes))
    result = (out / weight).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(result, "RGB")


def _run(upscaler: Upscaler, piece):
    """One tile through the model, padded to its size needs and cropped back (float32 CPU tensor out)."""
    import torch
    import torch.nn.functional as F

    height, width = piece.shape[1:]
    pad_w, pad_h = upscaler.model.size_requirements.get_padding(width, height)
    batch = piece.unsqueeze(0)
    if pad_w or pad_h:  # reflect as far as the tile allows, then repeat the edge
        reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
        batch = F.pad(batch, (0, reflect_w, 0, reflect_h), "reflect")
        batch = F.pad(batch, (0, pad_w - reflect_w, 0, pad_h - reflect_h), "replicate")
    dtype = getattr(torch, TORCH_DTYPES[upscaler.dtype])
    with torch.inference_mode():
        result = upscaler.model(batch.to(upscaler.device, dtype))
    scale = upscaler.scale
    return result[0, :, : height * scale, : width * scale].float().cpu()


def _feather(shape, ramp: int, shared: tuple[bool, bool, bool, bool]):
    """Weights of one output tile: rising across `ramp` pixels on each side a neighbour shares, 1 elsewhere."""
    import torch

    height, width = shape
    left, top, right, bottom = shared

    def axis(length: int, start: bool, end: bool):
        w = torch.ones(length)
        n = min(ramp, length // 2)
        if n:
            rise = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
            if start:
                w[:n] = torch.minimum(w[:n], rise)
            if end:
                w[length - n:] = torch.minimum(w[length - n:], rise.flip(0))
        return w

    return (axis(height, top, bottom)[:, None] * axis(width, left, right)[None, :]).unsqueeze(0)

"""Resolve model references, load pipelines once per process, and adapt them per task."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from dreamcli import families, memory
from dreamcli.checkpoints import (
    PICKLE_SUFFIXES,
    check_single_file,
    detect_family,
    file_keys,
    file_sha256,
    refuse_pickle,
    safetensors_keys,
)
from dreamcli.config import PACKAGE_PREFIX, cache_dir, package_path
from dreamcli.errors import (
    CorruptCheckpoint,
    DemoModelMissing,
    DreamError,
    InputError,
    LoraMismatch,
    ModelNotFound,
)
from dreamcli.requests import LoraRef, ModelOptions
from dreamcli.schedulers import SCHEDULERS, check_fits

# Silence import-time chatter (e.g. transformers asking for torchvision) before the heavy imports:
# stderr is for our progress and hints.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402  (after the verbosity settings above)

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO_PIPELINES = {"img2img": "AutoPipelineForImage2Image", "inpaint": "AutoPipelineForInpainting"}
# Extra torch.compile arguments (e.g. {"mode": "max-autotune"}); tests swap in a cheap backend.
COMPILE_KWARGS: dict = {}
DEMO_MISSING = (
    "the built-in demo model is not built yet: name a real checkpoint with -m "
    "(a .safetensors file, a diffusers folder or a Hugging Face repo id) or --preset sd15"
)


DEMO_FOLDER = (Path(__file__).parent / "demo" / "model").resolve()  # the built-in demo model, as a folder
# The built-in models' display names, however they are referenced (package:, a path, a preset).
BUILTIN_NAMES = {str(DEMO_FOLDER): "dreamcli-demo", str(DEMO_FOLDER.with_name("model-dit")): "dreamcli-demo-dit"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points: a diffusers folder, a single file, or a hub repo."""

    ref: str  # what the user wrote
    kind: str  # "folder" | "file" | "hub"
    location: str  # folder path, file path or repo id
    family: str | None  # a families name: "sd1", "flux", ... (None until a hub download tells)
    revision: str | None = None  # hub snapshot commit, when cached

    @property
    def name(self) -> str:
        """A short display name (what A1111 calls `Model`)."""
        if self.location in BUILTIN_NAMES:  # the engine's cache keeps the first load's source, whatever its ref
            return BUILTIN_NAMES[self.location]
        return Path(self.location).stem if self.kind != "hub" else self.location


def hub_offline() -> bool:
    """True when the hub must not be contacted (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub repo that has a model_index.json in the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return Path(found).parent if isinstance(found, str) else None


# Pipelines one task runs on its own (no family): model_index class -> (the family name records carry, the command).
TASK_ONLY = {"StableDiffusionUpscalePipeline": ("sd2-x4-upscaler", "dream upscale")}


def folder_family(folder: Path) -> str:
    """Family name of a diffusers folder (what its model_index.json and component configs say)."""
    task_only = TASK_ONLY.get(families.read_json(folder / "model_index.json").get("_class_name"))
    return task_only[0] if task_only else families.for_folder(folder).name


def resolve_model(ref: str, allow_unsafe_pickle: bool = False) -> ModelSource:
    """Turn a model reference into a ModelSource, or raise an error saying what was tried.

    Presets are expanded before this (config.merge_settings); here a reference is a packaged
    path, a local folder or file, or a Hugging Face repo id (cache first, then the hub).
    """
    if ref.startswith(PACKAGE_PREFIX):
        path = package_path(ref)
        if not (path / "model_index.json").is_file():
            raise DemoModelMissing(DEMO_MISSING)
        return ModelSource(ref, "folder", str(path), folder_family(path))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            component = families.read_json(path / "config.json").get("_class_name")
            if component:  # a ControlNet, a UNet or a transformer alone
                raise families.UnsupportedModel(families.describe_unsupported(component, f"folder {path}"))
            raise ModelNotFound(
                f"folder {path} is not a diffusers model (no model_index.json): give the folder that "
                "holds model_index.json, or a .safetensors checkpoint"
            )
        return ModelSource(ref, "folder", str(path.resolve()), folder_family(path))
    if path.is_file():
        family = check_single_file(path, allow_unsafe_pickle)
        return ModelSource(ref, "file", str(path.resolve()), family)
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or not REPO_ID.match(ref):
        raise ModelNotFound(
            f"model {ref!r} not found: it is no preset (see `dream gen --preset`), no local file or "
            "folder, and not a Hugging Face repo id (owner/name): check the path or name"
        )
    snapshot = cached_snapshot(ref)
    if snapshot is not None:
        return ModelSource(ref, "hub", ref, folder_family(snapshot), revision=snapshot.name)
    if hub_offline():
        raise ModelNotFound(
            f"model {ref!r} not found: no preset or local path of that name, not in the Hugging Face "
            "cache, and the hub is off (HF_HUB_OFFLINE=1): download it once online, or give a local "
            ".safetensors file or diffusers folder"
        )
    _probe_hub(ref)
    return ModelSource(ref, "hub", ref, None)


def _probe_hub(repo_id: str) -> None:
    """Ask the hub about a repo once, so a typo or a dead network fails fast with a clear line.

    Without this, the first download retries for half a minute and ends in a generic OSError.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry chatter is not for our stderr
    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        raise ModelNotFound(
            f"model {repo_id!r} is gated on the Hugging Face hub: accept its licence on its page, then "
            "log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFound(
            f"model {repo_id!r} not found: no preset or local path of that name, not in the Hugging Face "
            "cache, and no such repo on the hub (or it is private: log in with `hf auth login`)"
        ) from None
    except Exception as e:  # connection refused, DNS, timeouts, proxies: all mean "unreachable"
        raise _hub_error(ModelSource(repo_id, "hub", repo_id, None), e) from None


def pick_device(wanted: str) -> str:
    """`auto` means cuda, then mps, then cpu; under torchrun/accelerate each process takes its own GPU."""
    if wanted != "auto":
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {wanted} is not available here: use --device cpu or auto")
        if wanted == "mps" and not torch.backends.mps.is_available():
            raise InputError("device mps is not available here: use --device cpu or auto")
        return _local_gpu() if wanted == "cuda" else wanted
    if torch.cuda.is_available():
        return _local_gpu()
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _local_gpu() -> str:
    # Launchers set LOCAL_RANK per process; without it every process would pile onto cuda:0.
    from dreamcli.parallel import launched

    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if local_rank and launched() else "cuda"


def pick_dtype(wanted: str, device: str) -> str:
    """`auto` means fp16 on a GPU (half the memory, tensor cores) and fp32 on CPU (fp16 is slow there)."""
    if wanted != "auto":
        return wanted
    return "fp32" if device == "cpu" else "fp16"


@dataclass
class LoadedModel:
    """One loaded base pipeline plus what has been applied to it, shared by every task."""

    source: ModelSource
    pipe: object
    device: str
    dtype: str
    offload: str | None  # "model" | "sequential" | "group" (memory.apply_offload), None: on the device
    scheduler_config: dict  # the model's own, so swapping schedulers never compounds
    loras: tuple[LoraRef, ...] = ()
    task_pipes: dict = field(default_factory=dict)
    attention_slicing: bool = False
    fused_qkv: bool = False
    channels_last: bool = False
    compiled: str | None = None  # "regional" | "full" once the UNet is compiled (it stays so)
    compile_seconds: float | None = None  # the first compiled UNet call: compilation plus one step
    quantize: str | None = None  # "fp8" | "nf4" | "int8" (memory.py), None: weights as loaded
    memory_reason: str | None = None  # why offload / quantize were chosen, when they were chosen to fit
    vae_fp32: bool = False  # a half-precision VAE overflowed once here: decode in fp32 from now on
    _hash: str | None = None

    @property
    def family(self) -> str:
        """The family's name, as resolved from the files (or read off the pipeline of a fresh download)."""
        return self.source.family or families.for_pipeline(self.pipe).name

    @property
    def spec(self) -> families.Family:
        """What this model's family needs (its registry entry)."""
        return families.get(self.family)

    @property
    def denoiser(self):
        """The UNet or transformer that runs every step."""
        return getattr(self.pipe, self.spec.denoiser)

    @property
    def autoencoder(self):
        """The VAE (or Kandinsky's MoVQ) that turns latents into pixels."""
        return getattr(self.pipe, self.spec.autoencoder)

    def model_hash(self) -> str:
        """A1111-style short hash: the first 10 hex digits of the weights' SHA-256 (a commit for hub repos)."""
        if self._hash is None:
            self._hash = source_hash(self.source)
        return self._hash


_CACHE: dict[tuple, LoadedModel] = {}


def source_hash(source: ModelSource) -> str:
    """A1111-style short hash of a model source (weights SHA-256, or the hub snapshot commit)."""
    if source.kind == "hub":
        return (source.revision or "")[:10]
    path = Path(source.location)
    if source.kind == "folder":
        family = families.BY_NAME.get(source.family)  # None for a task-only pipeline (the x4 upscaler: a UNet)
        denoiser = path / (family.denoiser if family else "unet")
        weights = sorted(denoiser.glob("diffusion_pytorch_model*.safetensors")) or sorted(denoiser.glob("*"))
        if not weights:
            return ""
        path = weights[0]
    return file_sha256(path, cache_dir() / "hashes.json")[:10]


def _hub_error(source: ModelSource, error: Exception) -> ModelNotFound:
    what = type(error).__name__
    return ModelNotFound(
        f"cannot get {source.location!r} from the Hugging Face hub ({what}: is it reachable?) and it is "
        "not in the local cache: check the repo id and your network, or give a local .safetensors file or "
        "diffusers folder"
    )


def _single_file_config(source: ModelSource, model_config: str | None) -> str:
    """Component configs for a single-file checkpoint: the user's, the HF cache's, or the hub's."""
    if model_config:
        if Path(model_config).is_dir() or REPO_ID.match(model_config):
            return str(Path(model_config).resolve()) if Path(model_config).is_dir() else model_config
        raise InputError(f"--model-config {model_config} is neither a diffusers folder nor a repo id")
    family = families.get(source.family)
    repo = family.config_repo(file_keys(Path(source.location)))
    snapshot = cached_snapshot(repo)
    if snapshot is not None:
        return str(snapshot)
    if hub_offline():
        raise ModelNotFound(
            f"{Path(source.location).name} is a single-file {family.label} checkpoint; building "
            f"its pipeline needs the component configs of {repo}, which are not in the Hugging Face cache "
            "and the hub is off: run once online, or pass --model-config DIR (a diffusers folder of the "
            "same family)"
        )
    return repo


def dtype_kwargs(torch_dtype) -> dict:
    """The dtype keyword for diffusers' from_pretrained, under the name this diffusers version uses."""
    # diffusers renamed `torch_dtype` to `dtype` (0.36+) and warns on the old name.
    from diffusers.pipelines import pipeline_utils

    return {"dtype": torch_dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": torch_dtype}


def _load_single_file(source: ModelSource, options: ModelOptions, torch_dtype, device: str = "cpu"):
    """A pipeline from one checkpoint file, completed by its family's configs.

    A whole checkpoint (text encoders included: SD 1.x/2.x/SDXL, SD3 all-in-one files) goes through the
    pipeline's from_single_file. A denoiser-only file (Flux, most SD3/3.5 files, GGUF) loads as the
    denoiser alone, and the pipeline's other parts come from the config folder or repo: diffusers'
    from_single_file does not take text encoders from a config folder.
    """
    import diffusers

    family = families.get(source.family)
    path = Path(source.location)
    if not family.single_file:
        raise families.UnsupportedModel(
            f"{path.name} is a single-file {family.label} checkpoint, which diffusers cannot build a pipeline "
            "from: use the model's diffusers folder (or its hub id) with -m"
        )
    cls = getattr(diffusers, family.pipeline_class("text2img"))
    config = _single_file_config(source, options.model_config)
    local = {"local_files_only": Path(config).is_dir()}
    keys = file_keys(path)
    extra = memory.load_kwargs(family, options, device, torch_dtype, single_file=True)
    if family.denoiser != "transformer" or family.whole_file(keys):
        return cls.from_single_file(str(path), config=config, **local, **dtype_kwargs(torch_dtype),
                                    **family.single_file_kwargs, **extra)
    model_kwargs = {}
    if path.suffix.lower() == ".gguf":
        model_kwargs["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=torch_dtype)
    denoiser_class = getattr(diffusers, family.denoiser_class)
    try:
        denoiser = denoiser_class.from_single_file(str(path), config=config, subfolder=family.denoiser, **local,
                                                   torch_dtype=torch_dtype, **model_kwargs)
    except (RuntimeError, ValueError, KeyError) as e:  # diffusers' key converters assume the real widths
        raise CorruptCheckpoint(
            f"{path.name} looks like a {family.label} {family.denoiser} file, but diffusers cannot convert it "
            f"({_first_line(e)}): use a diffusers-format file or the model's folder"
        ) from None
    return cls.from_pretrained(config, **{family.denoiser: denoiser}, **local, **dtype_kwargs(torch_dtype), **extra)


def load_base_pipeline(source: ModelSource, options: ModelOptions, torch_dtype, device: str = "cpu"):
    """Load a fresh text-to-image pipeline for a source, outside the process cache (training edits it)."""
    import diffusers
    import transformers
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if source.kind == "file":
        try:
            pipe = _load_single_file(source, options, torch_dtype, device)
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            if isinstance(e, OSError) and not Path(_single_file_config(source, options.model_config)).is_dir():
                raise _hub_error(source, e) from None
            raise
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()  # diffusers' single-file T5 is left in training mode: dropout on, seeds vary
        return pipe
    location = source.location
    kwargs = dtype_kwargs(torch_dtype)
    if source.kind == "hub" and source.revision is None:
        # Not cached: from_pretrained downloads what the user named. Its index comes first (a few
        # bytes) so that we know which components to skip before gigabytes move.
        from huggingface_hub import hf_hub_download

        try:
            index_file = Path(hf_hub_download(location, "model_index.json"))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise _hub_error(source, e) from None
    else:
        if source.kind == "hub":
            location = str(cached_snapshot(source.location))
        index_file = Path(location) / "model_index.json"
    index = json.loads(index_file.read_text())
    family = families.get(source.family) if source.family else families.for_folder(index_file.parent)
    kwargs.update(memory.load_kwargs(family, options, device, torch_dtype))
    if "safety_checker" in index:
        # Like A1111 and most local tools, no NSFW filter: it blacks out images and costs 1.2 GB.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    # Components saved as null (demo-dit's T5, which it has not) must be passed as None: SD3's are required.
    kwargs.update({name: None for name, value in index.items()
                   if not name.startswith("_") and value == [None, None] and name not in kwargs})
    try:
        return diffusers.AutoPipelineForText2Image.from_pretrained(location, **kwargs)
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise _hub_error(source, e) from None
    except OSError as e:
        if source.kind == "hub" and source.revision is None:
            raise _hub_error(source, e) from None
        raise
    except ValueError:
        if index.get("_class_name") in ("KandinskyV22Pipeline", "KandinskyV22InpaintPipeline"):  # no prior linked
            raise families.UnsupportedModel(
                f"{source.ref} is a Kandinsky 2.2 decoder without its prior (its README.md names none): use a "
                "folder saved from the combined pipeline, or the hub's kandinsky-community/kandinsky-2-2-decoder"
            ) from None
        raise


def load_model(options: ModelOptions) -> LoadedModel:
    """Load (once per process) the base pipeline for these options, on its device and dtype."""
    source = resolve_model(options.model, options.allow_unsafe_pickle)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    key = (source.kind, source.location, options.model_config, device, dtype, options.offload, options.quantize,
           options.no_t5)
    if key in _CACHE:
        return _CACHE[key]  # pipeline_for checks any new LoRAs before it loads them
    for family, command in TASK_ONLY.values():
        if source.family == family:
            raise families.UnsupportedModel(f"{source.ref} is an SD x4 upscaler: use it with {command}")
    check_loras(options.loras, options.allow_unsafe_pickle, source.family)
    if options.quantize in ("nf4", "int8") and device.startswith("cuda:"):
        torch.cuda.set_device(device)  # bitsandbytes loads onto the current CUDA device
    pipe = load_base_pipeline(source, options, DTYPES[dtype], device)
    pipe.set_progress_bar_config(disable=True)  # progress is ours, on stderr, via on_step
    spec = families.get(source.family) if source.family else families.for_pipeline(pipe)
    offload, quantize, reason = memory.resolve(pipe, spec, options, device)
    memory.quantize(pipe, spec, quantize, DTYPES[dtype])
    memory.apply_offload(pipe, spec, offload, device)
    loaded = LoadedModel(source, pipe, device, dtype, offload, dict(pipe.scheduler.config), quantize=quantize,
                         memory_reason=reason)
    if source.family is None:  # downloaded just now: read the family off the pipeline
        loaded.source = ModelSource(source.ref, source.kind, source.location, loaded.family)
    _CACHE[key] = loaded
    return loaded


def _lora_location(lora: LoraRef, allow_unsafe_pickle: bool, family: str | None) -> tuple[str, str | None]:
    """(folder or repo id, weight file name) as diffusers' load_lora_weights wants them, once the
    file is known to be a readable LoRA: bad files fail here, before any model is loaded."""
    path = Path(lora.path).expanduser()
    if path.is_file():
        return str(path.parent), _check_lora_file(path, allow_unsafe_pickle, family)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            raise LoraMismatch(f"{path} is a diffusers model, not a LoRA: load it with -m, or give a LoRA with --lora")
        try:
            inside = sorted(p for p in path.iterdir() if p.is_file())
        except OSError as e:
            raise InputError(f"cannot read LoRA folder {path}: {e.strerror or e}") from None
        files = [p for p in inside if p.suffix.lower() == ".safetensors"]
        preferred = [f for f in files if f.name == "pytorch_lora_weights.safetensors"]
        pickles = [p for p in inside if p.suffix.lower() in PICKLE_SUFFIXES]
        if not files and pickles and allow_unsafe_pickle:
            files = pickles
        if not files:
            also = ""
            if pickles:
                also = f" (only the pickle {pickles[0].name}: pass --allow-unsafe-pickle if you trust it)"
            raise LoraMismatch(
                f"LoRA folder {path} holds no .safetensors file{also}: give the folder that holds "
                "pytorch_lora_weights.safetensors, or the LoRA file itself"
            )
        return str(path), _check_lora_file((preferred or files)[0], allow_unsafe_pickle, family)
    head, sep, tail = lora.path.rpartition(":")
    # `--lora DIR:abc`: parsing keeps a non-number after the last colon as part of the path, so the
    # path is "not found"; when what comes before the colon is a LoRA, the scale is what is wrong.
    # (Windows drives, `C:\x.safetensors`, leave a tail holding a separator: no scale was meant.)
    if sep and head and not any(c in tail for c in "/\\") and (
        Path(head).expanduser().exists() or Path(head).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)
    ):
        raise InputError(
            f"LoRA scale {tail!r} in --lora {lora.path} is not a number: write PATH:SCALE with a decimal scale, "
            f"e.g. {head}:0.8"
        )
    if REPO_ID.match(lora.path) and not hub_offline():
        return lora.path, None
    raise LoraMismatch(f"LoRA {lora.path} not found: give a .safetensors file or a folder holding one")


def _check_lora_file(path: Path, allow_unsafe_pickle: bool, family: str | None) -> str:
    """The file name of a LoRA that is safe to hand to diffusers: a complete .safetensors LoRA, or a
    pickle the user allowed; refuses corrupt files, full checkpoints named as a LoRA, and a LoRA whose
    tensor names say it was made for another family than the model's."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        refuse_pickle(path, allow_unsafe_pickle, "LoRA ")
        return path.name  # diffusers reads it with torch.load(weights_only=True); failures are caught there
    if suffix != ".safetensors":
        # diffusers would hand any other name to torch.load, i.e. unpickle it.
        raise InputError(f"LoRA {path} is not a .safetensors file: give a .safetensors LoRA (or a folder holding one)")
    keys = safetensors_keys(path, "LoRA ")
    if not keys:
        raise CorruptCheckpoint(f"LoRA {path} holds no weights: download it again")
    checkpoint = detect_family(keys)
    if checkpoint is not None and not any("lora" in key.lower() for key in keys):
        raise LoraMismatch(
            f"{path} is a full {families.label(checkpoint)} checkpoint, not a LoRA: load it with -m, or give a "
            "LoRA with --lora"
        )
    kind = families.lora_kind(keys)
    model = families.BY_NAME.get(family)
    if model is not None and kind is not None and model.lora_kind is not None and kind != model.lora_kind:
        raise LoraMismatch(
            f"LoRA {path.name} was made for {kind} models, and this model is {model.label}: use a LoRA made for "
            f"{model.label}"
        )
    return path.name


def check_loras(loras: tuple[LoraRef, ...], allow_unsafe_pickle: bool, family: str | None = None) -> None:
    """Refuse missing or unreadable LoRA files (or a bad scale, or one for another family) before seconds go
    into loading a model."""
    for lora in loras:
        _lora_location(lora, allow_unsafe_pickle, family)


@contextlib.contextmanager
def _libraries_quiet():
    """Hush diffusers, transformers and peft for the duration.

    A LoRA that does not fit makes diffusers log every mismatched tensor (and peft warn) before it
    raises: the user gets that as one line from us instead. Warnings on success are noise too.
    """
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_lora(loaded: LoadedModel, lora: LoraRef, location: str, weight_name: str | None, name: str) -> None:
    """pipe.load_lora_weights with its failures as one line naming the LoRA and the model."""
    model = f"model {loaded.source.name} ({loaded.spec.label})"
    peft = loaded.spec.lora == "peft"
    if peft and weight_name is None:
        raise LoraMismatch(
            f"{loaded.spec.label} LoRAs load as peft adapters from local files: download {lora.path} and give "
            "its folder or .safetensors file"
        )
    try:
        with _libraries_quiet():
            if peft:
                from dreamcli.adapters import load_adapter

                load_adapter(loaded.denoiser, Path(location) / weight_name, name)
            else:
                kohya = None
                if loaded.family == "sd3" and weight_name is not None:  # diffusers has no kohya SD3 converter
                    from dreamcli.lora_convert import read_kohya_sd3

                    kohya = read_kohya_sd3(Path(location) / weight_name, f"LoRA {lora.path}")
                if kohya is not None:
                    loaded.pipe.load_lora_weights(kohya, adapter_name=name)
                else:
                    loaded.pipe.load_lora_weights(location, weight_name=weight_name, adapter_name=name)
    except (MemoryError, torch.OutOfMemoryError, LoraMismatch):
        raise  # the machine's limit, not the file's fault
    except OSError as e:
        # diffusers turns every read failure into "Unable to load weights from checkpoint file".
        if weight_name is None:  # a hub repo
            raise ModelNotFound(f"cannot get LoRA {lora.path} from the Hugging Face hub: {_first_line(e)}") from None
        raise CorruptCheckpoint(
            f"LoRA {lora.path} is not a readable {Path(weight_name).suffix or 'LoRA'} file: download it again"
        ) from None
    except Exception as e:  # a malformed file can break diffusers' converters anywhere
        # A converter's bare assert (kohya Flux files with unexpected blocks) has no message at all.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [
            f"diffusers could not convert its tensor names ({type(e).__name__})"
        ]
        # torch lists every bad tensor; the first "size mismatch" line says the most.
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[0])[:160]
        raise LoraMismatch(f"LoRA {lora.path} does not fit {model}: {detail}") from None
    if name not in _adapter_names(loaded):
        raise LoraMismatch(
            f"LoRA {lora.path} has no weights for the layers of {model}: it was made for another model"
        )


def _first_line(error: Exception) -> str:
    return next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)[:160]


def _adapter_names(loaded: LoadedModel) -> set[str]:
    if loaded.spec.lora == "peft":
        from dreamcli.adapters import adapter_names

        return adapter_names(loaded.denoiser)
    return {n for names in loaded.pipe.get_list_adapters().values() for n in names}


def _unload_loras(loaded: LoadedModel) -> None:
    if loaded.spec.lora == "peft":
        from dreamcli.adapters import unload

        unload(loaded.denoiser)
    else:
        loaded.pipe.unload_lora_weights()


def apply_loras(loaded: LoadedModel, loras: tuple[LoraRef, ...], allow_unsafe_pickle: bool) -> None:
    """Make exactly these LoRAs active: through the pipeline's loader (diffusers reads diffusers, kohya and
    A1111 formats), or as peft adapters on the denoiser for families without one."""
    if tuple(loras) == loaded.loras:
        return
    if loaded.loras:
        _unload_loras(loaded)
        loaded.loras = ()
    names = []
    try:
        for i, lora in enumerate(loras):
            location, weight_name = _lora_location(lora, allow_unsafe_pickle, loaded.family)
            name = f"lora{i}"
            _load_lora(loaded, lora, location, weight_name, name)
            names.append(name)
    except BaseException:
        if names or _adapter_names(loaded):
            _unload_loras(loaded)
        raise
    if names:
        weights = [lora.scale for lora in loras]
        if loaded.spec.lora == "peft":
            from dreamcli.adapters import set_adapters

            set_adapters(loaded.denoiser, names, weights)
        else:
            loaded.pipe.set_adapters(names, adapter_weights=weights)
    loaded.loras = tuple(loras)


def make_scheduler(loaded: LoadedModel, name: str | None):
    """A fresh scheduler: the friendly name's class on the model's own config, or the model's own."""
    import diffusers

    base = loaded.scheduler_config
    if name is None:
        return getattr(diffusers, base["_class_name"]).from_config(base)
    check_fits(name, loaded.spec)
    spec = SCHEDULERS[name]
    with _libraries_quiet():  # "config attributes were passed ... but are not expected": the other classes' keys
        return getattr(diffusers, spec.class_name).from_config(base, **spec.config_overrides(base))


def pipeline_for(task: str, options: ModelOptions):
    """The pipeline for a task, built from the already-loaded weights (no second load).

    Returns (pipeline, loaded model). Scheduler, LoRAs and memory options are applied on every call
    because one process may serve requests with different settings.
    """
    import diffusers

    loaded = load_model(options)
    pipe = loaded.task_pipes.get(task)
    if pipe is None:
        loaded.spec.pipeline_class(task)  # refuses a task the family has no pipeline for
        loaded.spec.check_task(task, loaded.pipe)
        if task == "text2img":
            pipe = loaded.pipe
        else:
            # The auto classes build the family's task pipeline around the same modules; a pipeline class's
            # own from_pipe would also cast them all to fp32 (diffusers 0.42) unless told the dtype.
            pipe = getattr(diffusers, AUTO_PIPELINES[task]).from_pipe(loaded.pipe)
            pipe.set_progress_bar_config(disable=True)
        loaded.task_pipes[task] = pipe
    # Fused projections hold copies of the base weights, which a LoRA would not reach: unfuse first.
    # Fusing concatenates weights into a new layer: fp8's per-layer casting and group/sequential offloading's
    # hooks would not reach it, and bitsandbytes packs its weights.
    plain_weights = loaded.quantize is None and loaded.offload in (None, "model")
    want_fused = (_on_for_cuda(options.fuse_qkv, loaded) and not options.loras and not options.attention_slicing
                  and plain_weights)
    if loaded.fused_qkv and not want_fused:
        set_fused_qkv(loaded, False)
    apply_loras(loaded, options.loras, options.allow_unsafe_pickle)
    pipe.scheduler = make_scheduler(loaded, options.scheduler)
    # Toggle only on change: each toggle rewrites attention processors / VAE state.
    autoencoder = loaded.autoencoder
    if options.vae_tiling != getattr(autoencoder, "use_tiling", False):
        if not hasattr(autoencoder, "enable_tiling"):
            raise InputError(f"{loaded.spec.label} models cannot decode in tiles: leave out --vae-tiling")
        autoencoder.enable_tiling() if options.vae_tiling else autoencoder.disable_tiling()
    if options.attention_slicing != loaded.attention_slicing:
        pipe.enable_attention_slicing() if options.attention_slicing else pipe.disable_attention_slicing()
        loaded.attention_slicing = options.attention_slicing
    if want_fused and not loaded.fused_qkv:
        set_fused_qkv(loaded, True)
    channels_last = _on_for_cuda(options.channels_last, loaded) and loaded.offload in (None, "model")
    if channels_last != loaded.channels_last:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        loaded.denoiser.to(memory_format=layout)
        loaded.autoencoder.to(memory_format=layout)
        loaded.channels_last = channels_last
    if options.compile and loaded.compiled is None:
        compile_denoiser(loaded)
    return pipe, loaded


_CONTROLNETS: dict[tuple, tuple] = {}
AUTO_TASK_PIPELINES = {"text2img": "AutoPipelineForText2Image", **AUTO_PIPELINES}


def load_controlnet(ref: str, loaded: LoadedModel, allow_unsafe_pickle: bool = False):
    """A ControlNet (folder, hub id or single file) on the model's device and dtype, loaded once per process.

    Returns (model, name, short hash) — the name and hash as A1111's ControlNet infotext shows them.
    """
    key = (ref, loaded.device, loaded.dtype)
    if key not in _CONTROLNETS:
        net, source = _read_controlnet(ref, loaded, allow_unsafe_pickle)
        net.to(loaded.device)
        net.eval()
        _CONTROLNETS[key] = (net, source.name, source_hash_of_controlnet(source))
    return _CONTROLNETS[key]


def source_hash_of_controlnet(source: ModelSource) -> str:
    """The first 8 hex digits of a ControlNet's weights' SHA-256 (a hub snapshot: its commit)."""
    if source.kind == "hub":
        return (source.revision or "")[:8]
    path = Path(source.location)
    if source.kind == "folder":
        weights = sorted(path.glob("diffusion_pytorch_model*.safetensors")) or sorted(path.glob("*.safetensors"))
        if not weights:
            return ""
        path = weights[0]
    return file_sha256(path, cache_dir() / "hashes.json")[:8]


def _read_controlnet(ref: str, loaded: LoadedModel, allow_unsafe_pickle: bool):
    import diffusers

    single, multi = loaded.spec.controlnet_classes
    dtype = dtype_kwargs(DTYPES[loaded.dtype])
    path = Path(ref).expanduser()
    what = f"ControlNet {ref}"
    try:
        if path.is_dir():
            config = families.read_json(path / "config.json")
            name = config.get("_class_name")
            if not name or "ControlNet" not in name or not hasattr(diffusers, name):
                raise ModelNotFound(f"{what} is not a diffusers ControlNet folder (its config.json names "
                                    f"{name or 'no ControlNet class'}): give a ControlNet folder, hub id or file")
            with _libraries_quiet():
                net = getattr(diffusers, name).from_pretrained(str(path), **dtype)
            return net, ModelSource(ref, "folder", str(path.resolve()), loaded.family)
        if path.is_file():
            if path.suffix.lower() in PICKLE_SUFFIXES:
                refuse_pickle(path, allow_unsafe_pickle, "ControlNet ")
            with _libraries_quiet():
                net = getattr(diffusers, single).from_single_file(str(path), **dtype)
            return net, ModelSource(ref, "file", str(path.resolve()), loaded.family)
        if not REPO_ID.match(ref):
            raise ModelNotFound(f"{what} not found: give a ControlNet folder, .safetensors file or hub id")
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        if not isinstance(cached, str) and hub_offline():
            raise ModelNotFound(f"{what} is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1): "
                                "download it once online, or give a local ControlNet folder or file")
        name = families.read_json(Path(cached)).get("_class_name") if isinstance(cached, str) else None
        cls = getattr(diffusers, name) if name and hasattr(diffusers, name) else getattr(diffusers, single)
        with _libraries_quiet():
            net = cls.from_pretrained(ref, **dtype)
        revision = Path(cached).parent.name if isinstance(cached, str) else None
        return net, ModelSource(ref, "hub", ref, loaded.family, revision=revision)
    except DreamError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelNotFound(f"{what} cannot be loaded ({type(e).__name__}: {_first_line(e)})") from None


def _check_controlnet_fits(ref: str, net, loaded: LoadedModel) -> None:
    """Refuse a ControlNet made for another model (an SDXL one on SD 1.5 fails deep inside diffusers)."""
    mine, theirs = loaded.denoiser.config, net.config
    for key, what in (("cross_attention_dim", "text width"), ("addition_embed_type", "extra conditioning"),
                      ("block_out_channels", "block widths"), ("joint_attention_dim", "text width"),
                      ("pooled_projection_dim", "pooled text width"), ("in_channels", "latent channels")):
        if key in theirs and key in mine and _plain(theirs[key]) != _plain(mine[key]):
            raise families.UnsupportedModel(
                f"ControlNet {ref} was made for another model ({what} {_plain(theirs[key])}, this "
                f"{loaded.spec.label} model's is {_plain(mine[key])}): use a ControlNet made for {loaded.spec.label}"
            )


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def control_pipeline_for(task: str, options: ModelOptions, refs: tuple[str, ...]):
    """The ControlNet pipeline for a task over the already-loaded base weights (AutoPipeline's from_pipe with
    `controlnet=`; no second load), with these ControlNets (several: the family's Multi class).

    Returns (pipeline, loaded model, [(name, hash) per ControlNet]).
    """
    import diffusers

    base, loaded = pipeline_for(task, options)  # scheduler, LoRAs and memory options, on the shared modules
    loaded.spec.pipeline_class(families.CONTROL + task)  # refuses a family without ControlNet pipelines
    found = [load_controlnet(ref, loaded, options.allow_unsafe_pickle) for ref in refs]
    for ref, (net, _, _) in zip(refs, found, strict=True):
        _check_controlnet_fits(ref, net, loaded)
    key = (families.CONTROL + task, tuple(refs))
    pipe = loaded.task_pipes.get(key)
    if pipe is None:
        nets = [net for net, _, _ in found]
        multi = getattr(diffusers, loaded.spec.controlnet_classes[1])
        if any(isinstance(net, diffusers.ControlNetUnionModel) for net in nets):
            # One Union model reads every map itself, each with its control mode (tasks/control.py).
            if len(set(refs)) != 1:
                raise InputError(
                    "a ControlNet-Union model steers every control type itself: give every --control type the same "
                    "Union model (--control-model TYPE=REF), not a mix of models"
                )
            nets = nets[:1]
        controlnet = nets[0] if len(nets) == 1 else multi(nets)
        if isinstance(controlnet, diffusers.ControlNetUnionModel):
            # AutoPipeline's from_pipe would build the plain ControlNet pipeline around it (diffusers 0.42); a
            # pipeline class's own from_pipe casts every module to fp32 unless told the dtype.
            cls = getattr(diffusers, loaded.spec.pipeline_class(families.CONTROL + "union-" + task))
            pipe = cls.from_pipe(loaded.pipe, controlnet=controlnet, **dtype_kwargs(DTYPES[loaded.dtype]))
        else:
            pipe = getattr(diffusers, AUTO_TASK_PIPELINES[task]).from_pipe(loaded.pipe, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        loaded.task_pipes[key] = pipe
    pipe.scheduler = base.scheduler  # the request's, as pipeline_for made it
    return pipe, loaded, [(name, short) for _, name, short in found]


def _on_for_cuda(choice: bool | None, loaded: LoadedModel) -> bool:
    # Fast paths default to on where they were made for (CUDA); elsewhere only when asked for.
    return loaded.device.startswith("cuda") if choice is None else choice


def set_fused_qkv(loaded: LoadedModel, fused: bool) -> None:
    """Fuse (or unfuse) the denoiser's and VAE's attention projections into one matmul each.

    diffusers keeps the separate projections too, so unfusing only switches the processors back.
    Models with added KV projections cannot be fused; they are left as they are.
    """
    done = False
    for model in (loaded.denoiser, loaded.autoencoder):
        if not hasattr(model, "fuse_qkv_projections"):
            continue
        if getattr(model.config, "dual_attention_layers", None):
            # SD 3.5 Medium: diffusers 0.42 also fuses the image-only second attention into the joint
            # processor, which then gets no text and fails; leave such a model unfused.
            continue
        if fused:
            try:
                model.fuse_qkv_projections()
                done = True
            except ValueError:  # "not supported for models having added KV projections"
                continue
        elif getattr(model, "original_attn_processors", None) is not None:
            model.unfuse_qkv_projections()
    loaded.fused_qkv = done


def compile_denoiser(loaded: LoadedModel) -> None:
    """torch.compile the UNet or transformer once: only its repeated blocks where diffusers lists them (regional
    compilation: each block type is compiled once and reused, so the warm-up is a fraction of the
    whole model's), else its whole forward.

    The first denoiser call afterwards pays the compilation; its wall time lands in `loaded.compile_seconds`.
    """
    model = loaded.denoiser
    if getattr(model, "_repeated_blocks", None) and hasattr(model, "compile_repeated_blocks"):
        model.compile_repeated_blocks(**COMPILE_KWARGS)
        loaded.compiled = "regional"
    else:
        # Compiling forward, not the module, keeps module hooks (offload, the timer below) outside the graph.
        model.forward = torch.compile(model.forward, **COMPILE_KWARGS)
        loaded.compiled = "full"
    _time_first_call(loaded, model)


def _time_first_call(loaded: LoadedModel, module) -> None:
    started = {}

    def sync():
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it, or the time is only the launch

    def before(_module, _args):
        sync()
        started["t"] = time.perf_counter()

    def after(_module, _args, _output):
        sync()
        loaded.compile_seconds = time.perf_counter() - started["t"]
        for handle in handles:
            handle.remove()

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def fast_paths(loaded: LoadedModel) -> dict:
    """What speeds this model up right now (for the image record, so results can be compared)."""
    processors = sorted({type(p).__name__ for p in loaded.denoiser.attn_processors.values()})
    return {
        "attention": "+".join(processors),
        "fused_qkv": loaded.fused_qkv,
        "channels_last": loaded.channels_last,
        "compile": loaded.compiled,
        "vae_dtype": "fp32" if loaded.vae_fp32 else loaded.dtype,
        **memory.describe(loaded.offload, loaded.quantize, loaded.pipe, loaded.spec),
        "vae_tiling": bool(getattr(loaded.autoencoder, "use_tiling", False)),
        "attention_slicing": loaded.attention_slicing,
    }


def decode_latents(loaded: LoadedModel, pipe, latents, width: int, height: int) -> list:
    """PIL images from a pipeline's latents (output_type="latent"), never black or NaN ones.

    The family says how its latents decode (Flux unpacks 2x2 patches first, Kandinsky goes through
    MoVQ). A half-precision VAE can overflow to inf/NaN (SD 1.x and SDXL VAEs in fp16 do, on some
    pictures): that batch is decoded again in fp32 and this model's VAE decodes in fp32 from then
    on, as SDXL's `force_upcast` asks for up front.
    """
    if not torch.isfinite(latents).all():
        raise DreamError(
            f"the model produced non-finite latents in {loaded.dtype} (an overflow): use --dtype bf16 or fp32"
        )
    family = loaded.spec
    vae = getattr(pipe, family.autoencoder)
    half = vae.dtype == torch.float16
    if half and family.upcast_vae and getattr(vae.config, "force_upcast", False):
        loaded.vae_fp32 = True

    def decode():
        return family.decode(pipe, vae, latents, width, height)

    with torch.inference_mode():
        if half and loaded.vae_fp32:
            pixels = _in_fp32(vae, decode)
        else:
            pixels = decode()
            if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
                loaded.vae_fp32 = True
                pixels = _in_fp32(vae, decode)
    if not torch.isfinite(pixels).all():
        raise DreamError("the VAE produced non-finite pixels even in fp32: the model's VAE weights look broken")
    if getattr(pipe, "watermark", None) is not None:  # what SDXL's pipeline does when it decodes itself
        pixels = pipe.watermark.apply_watermark(pixels)
    images = _postprocessor(pipe).postprocess(pixels.float(), output_type="pil")
    if loaded.offload == "model":
        pipe.maybe_free_model_hooks()  # send the VAE back to the CPU, as the pipeline's own decode does
    return images


def _postprocessor(pipe):
    # Kandinsky's pipelines have no image processor; pixels in [-1, 1] need the same steps everywhere.
    from diffusers.image_processor import VaeImageProcessor

    return getattr(pipe, "image_processor", None) or VaeImageProcessor()


def _in_fp32(vae, decode):
    # Back to the working dtype afterwards: image-to-image pipelines share this VAE and feed it half inputs.
    dtype = vae.dtype
    vae.to(dtype=torch.float32)
    try:
        return decode().float()
    finally:
        vae.to(dtype=dtype)


def clear_cache() -> None:
    """Forget every loaded model (tests, long-running hosts)."""
    _CACHE.clear()
    _CONTROLNETS.clear()

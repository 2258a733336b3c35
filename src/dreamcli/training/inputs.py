"""Check everything the user gave before any model loads or any file is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dreamcli.errors import InputError
from dreamcli.io.images import PictureTooLarge, open_image
from dreamcli.io.outputs import check_outdir as check_outdir_writable
from dreamcli.requests import TuneConfig
from dreamcli.training import rundir

FEW_IMAGES = 3  # DreamBooth works from 3-5 photos; fewer usually gives a copy of one photo


@dataclass
class TuneInputs:
    """What the checks found: the images to use, the model's place, and how to treat the output folder."""

    instance_images: list[Path]
    class_images: list[Path]  # the user's --class-dir images (topped up from the cache when too few)
    source: object  # engine.ModelSource
    resolution: int
    resume_from: Path | None = None
    resume_step: int = 0
    start_over: bool = False  # --overwrite over a previous run: remove its files first
    warnings: list[str] = field(default_factory=list)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_sizes(files: list[Path]) -> tuple[dict[Path, tuple[int, int]], list[Path]]:
    """Sizes of the files Pillow can read (upright, after EXIF rotation), and the files it cannot.

    Each file is decoded once, so a damaged one is found here, not mid-training; a picture over the pixel
    limit (a decompression bomb) is refused from its header with an InputError, not skipped.
    """
    sizes, unreadable = {}, []
    for path in files:
        try:
            image = open_image(path)
        except PictureTooLarge:
            raise
        except InputError:
            unreadable.append(path)
            continue
        sizes[path] = image.size
        image.close()
    return sizes, unreadable


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_instance_images(folder: str, resolution: int) -> tuple[list[Path], list[str]]:
    """The readable instance images, plus warnings (few images, small images, skipped files)."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise InputError(f"image folder {path} does not exist: pass --images DIR with 3-20 photos of the subject")
    if not path.is_dir():
        raise InputError(f"--images {path} is a file: give the folder that holds the photos")
    files = _image_files(path)
    if not files:
        raise InputError(f"image folder {path} is empty: put 3-20 photos of the subject in it")
    sizes, unreadable = read_sizes(files)
    if not sizes:
        raise InputError(f"image folder {path} has no readable images: cannot read {_names(unreadable)}")
    warnings = []
    if unreadable:
        warnings.append(f"skipping {len(unreadable)} unreadable file(s) in {path}: {_names(unreadable)}")
    if len(sizes) < FEW_IMAGES:
        warnings.append(f"only {len(sizes)} instance image(s): 3-20 photos from different angles work best")
    small = [f"{p.name} {w}x{h}" for p, (w, h) in sizes.items() if min(w, h) < resolution]
    if small:
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        warnings.append(
            f"{len(small)} image(s) smaller than the training resolution {resolution}px will be upscaled "
            f"(blurry results): {', '.join(small[:5])}{more}"
        )
    return list(sizes), warnings


def check_class_dir(folder: str) -> list[Path]:
    """The user's class images; every file must be readable (they are used as they are)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"class folder {path} does not exist or is not a folder: fix --class-dir or leave it out")
    sizes, unreadable = read_sizes(_image_files(path))
    if unreadable:
        raise InputError(
            f"class folder {path} has {len(unreadable)} unreadable file(s): {_names(unreadable)}: "
            "remove them or leave --class-dir out to let the model make class images"
        )
    return list(sizes)


def native_resolution(source) -> int:
    """The size a model was trained at, from its denoiser's and VAE's configs (family default otherwise)."""
    from dreamcli import families

    family = families.get(source.family or "sd1")
    if source.kind == "folder":
        try:
            denoiser = json.loads((Path(source.location) / family.denoiser / "config.json").read_text())
            vae = json.loads((Path(source.location) / "vae" / "config.json").read_text())
            return int(denoiser["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, KeyError, ValueError, TypeError):
            pass
    return family.native_size  # single files, hub repos without configs, Flux (its config has no sample size)


def check_tunable(family_name: str | None) -> None:
    """Refuse a model family `dream tune` cannot train, naming it (a hub model not yet downloaded is
    checked once its pipeline tells the family)."""
    from dreamcli import families
    from dreamcli.training.families import RECIPES, refusal

    if family_name is None:
        return
    if family_name not in RECIPES:
        raise InputError(refusal(families.get(family_name).label))


def run_record(config: TuneConfig) -> dict:
    """The part of tune_config.json that identifies a run (compared on --resume)."""
    return {"settings": config.to_dict()}


def check_outdir(config: TuneConfig, inputs: TuneInputs) -> None:
    """Refuse to mix two runs in one folder; find the checkpoint --resume continues from."""
    outdir = Path(config.output_dir).expanduser()
    check_outdir_writable(outdir)
    previous = rundir.read_config(outdir) if outdir.is_dir() else None
    leftovers = rundir.our_files(outdir) if outdir.is_dir() else []
    found = rundir.checkpoints(outdir) if outdir.is_dir() else []
    if config.resume:
        if not found:
            raise InputError(
                f"--resume: no checkpoint in {outdir / rundir.CHECKPOINTS}: start without --resume "
                "(checkpoints are written every --checkpoint-every steps and on Ctrl-C)"
            )
        if previous is not None:
            changed = identity_difference_for(previous, config)
            if changed:
                raise InputError(
                    f"--resume: the run in {outdir} was trained with other settings ({changed}): "
                    "resume with the same settings, or use --overwrite or another -o"
                )
        step, path = found[-1]
        # A run killed after its last checkpoint (writing the weights, the last validation round) has
        # nothing left to train: --resume finishes it.
        unfinished = previous is not None and previous.get("status") != "finished"
        if step > config.max_train_steps or (step == config.max_train_steps and not unfinished):
            raise InputError(
                f"--resume: the run in {outdir} already reached step {step} of --steps "
                f"{config.max_train_steps}: raise --steps to train further"
            )
        inputs.resume_from, inputs.resume_step = path, step
        return
    # A run stopped before its first checkpoint left nothing worth keeping: start it over quietly.
    trained = found or (outdir / rundir.WEIGHTS_NAME).exists()
    if trained and not config.overwrite:
        if previous is not None and not identity_difference_for(previous, config):
            raise InputError(
                f"output folder {outdir} already holds this run: pass --resume to continue it or "
                "--overwrite to start over"
            )
        raise InputError(
            f"output folder {outdir} already holds a different run ({_names(leftovers)}): "
            "choose another -o, or pass --overwrite to replace it"
        )
    inputs.start_over = bool(leftovers)


def identity_difference_for(previous: dict, config: TuneConfig) -> str | None:
    """The first learning-relevant setting where the previous run and this config differ."""
    return rundir.identity_difference(previous, run_record(config))


def check_inputs(config: TuneConfig) -> TuneInputs:
    """Every check that needs no model weights: images, class images, model reference, output folder.

    Raises InputError (nothing written) on bad input; returns warnings for the caller to show.
    """
    from dreamcli.compat import check_peft
    from dreamcli.engine import pick_device, resolve_model

    check_peft(text_encoder=config.train_text_encoder)
    source = resolve_model(config.model, config.allow_unsafe_pickle)
    if pick_device(config.device) == "cpu" and config.mixed_precision == "fp16":
        raise InputError("--mixed-precision fp16 needs a GPU: use bf16 or no on the CPU")
    check_tunable(source.family)
    resolution = config.resolution or native_resolution(source)
    instance, warnings = check_instance_images(config.instance_data_dir, resolution)
    class_images = []
    if config.class_data_dir:
        if not config.with_prior_preservation:
            warnings.append("--class-dir is unused with --no-prior")
        else:
            class_images = check_class_dir(config.class_data_dir)
    if config.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise InputError(
                "--8bit-adam needs bitsandbytes: pip install bitsandbytes, or leave the flag out"
            ) from None
    inputs = TuneInputs(instance, class_images, source, resolution, warnings=warnings)
    check_outdir(config, inputs)
    return inputs

"""The SD3.5, Flux.1, PixArt-Σ and Kandinsky 2.2 presets: settings as `dream gen --preset` merges them, no weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamcli import families
from dreamcli.cli.gen import plan_gen
from dreamcli.cli.image_common import task_settings
from dreamcli.config import load_preset
from dreamcli.schedulers import SCHEDULERS

# preset -> (family, hub id, size, steps, guidance): the model cards' recommended settings.
PRESETS = {
    "sd35-medium": ("sd3", "stabilityai/stable-diffusion-3.5-medium", 1024, 40, 4.5),
    "sd35-large": ("sd3", "stabilityai/stable-diffusion-3.5-large", 1024, 28, 3.5),
    "sd35-large-turbo": ("sd3", "stabilityai/stable-diffusion-3.5-large-turbo", 1024, 4, 0.0),
    "flux-dev": ("flux", "black-forest-labs/FLUX.1-dev", 1024, 28, 3.5),
    "flux-schnell": ("flux", "black-forest-labs/FLUX.1-schnell", 1024, 4, 0.0),
    "pixart-sigma": ("pixart", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024, 20, 4.5),
    "kandinsky22": ("kandinsky", "kandinsky-community/kandinsky-2-2-decoder", 768, 50, 4.0),
}
# What image sides must divide by for the real models: 8x VAE x 2x2 patches (SD3, PixArt) or 2x2 packing
# (Flux); Kandinsky's pipelines round up to whole MoVQ blocks squared (8 x 8).
SIZE_MULTIPLE = {"sd3": 16, "flux": 16, "pixart": 16, "kandinsky": 64}


def _flags(**given) -> dict:
    """Every flag `dream gen` passes to plan_gen, unset except those given."""
    names = ("model", "preset", "model_config", "num_images", "seed", "steps", "guidance", "negative", "scheduler",
             "lora", "outdir", "format", "device", "dtype", "offload", "vae_tiling", "attention_slicing", "compile",
             "channels_last", "fuse_qkv", "allow_unsafe_pickle", "guidance_rescale", "width", "height", "batch_size")
    return {name: given.get(name) for name in names}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh user config folder (no config.toml, no user presets) for each test."""
    monkeypatch.setenv("DREAMCLI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_gives_the_model_cards_settings(name, home, tmp_path):
    family, repo, size, steps, guidance = PRESETS[name]
    plan = plan_gen(["a lighthouse at dusk"], None, None, _flags(preset=name, outdir=str(tmp_path / "out")))
    (request,) = plan.requests
    assert plan.preset == name
    assert request.model.model == repo  # a hub id, passed on as it is (nothing is downloaded here)
    assert (request.width, request.height) == (size, size)
    assert (request.num_inference_steps, request.guidance_scale) == (steps, guidance)
    assert size % SIZE_MULTIPLE[family] == 0
    description = load_preset(name)["description"]
    assert f"{size} px" in description


@pytest.mark.parametrize("name", PRESETS)
def test_a_named_scheduler_fits_the_family_and_is_its_own_sampler(name, home):
    family = families.get(PRESETS[name][0])
    scheduler = load_preset(name).get("scheduler")
    if scheduler is None:  # Kandinsky: its DDPM sampler has no friendly name
        assert family.name == "kandinsky"
        return
    spec = SCHEDULERS[scheduler]
    assert spec.fits(family), f"{name}: {scheduler} does not fit {family.label}"
    # Named only to shield the model from a config.toml sampler: the model's own class, nothing changed.
    assert spec.overrides == {}
    own = {"sd3": "FlowMatchEulerDiscreteScheduler", "flux": "FlowMatchEulerDiscreteScheduler",
           "pixart": "DPMSolverMultistepScheduler"}[family.name]
    assert spec.class_name == own


def test_the_tiny_models_scheduler_configs_match_what_the_presets_name(families):
    """The tiny models carry their real repos' scheduler classes: the named sampler is what they ship."""
    for preset, folder in (("sd35-medium", "sd3"), ("flux-dev", "flux-dev"), ("flux-schnell", "flux-schnell"),
                           ("pixart-sigma", "pixart-sigma")):
        config = json.loads((Path(families[folder]) / "scheduler" / "scheduler_config.json").read_text())
        assert SCHEDULERS[load_preset(preset)["scheduler"]].class_name == config["_class_name"], preset


def test_a_sampler_in_config_toml_does_not_reach_flow_presets(home, tmp_path):
    """A user who set an SD 1.x sampler in config.toml can still run SD3.5 and Flux presets."""
    home.mkdir(parents=True)
    (home / "config.toml").write_text('scheduler = "dpm++2m-karras"\nsteps = 25\n')
    out = str(tmp_path / "out")
    for name in ("sd35-medium", "flux-dev", "pixart-sigma"):
        (request,) = plan_gen(["x"], None, None, _flags(preset=name, outdir=out)).requests
        assert request.model.scheduler == load_preset(name)["scheduler"] != "dpm++2m-karras"
        assert request.num_inference_steps == PRESETS[name][3]  # the preset's steps beat the config's too


def test_flags_still_win_over_the_preset(home, tmp_path):
    flags = _flags(preset="flux-schnell", steps=2, guidance=1.0, width=512, height=768, outdir=str(tmp_path))
    (request,) = plan_gen(["x"], None, None, flags).requests
    assert (request.num_inference_steps, request.guidance_scale, request.width, request.height) == (2, 1.0, 512, 768)
    assert request.model.model == "black-forest-labs/FLUX.1-schnell"


def test_model_flag_naming_a_preset_takes_its_sizes(home, tmp_path):
    """`dream gen -m flux-dev` means the preset, as `-m sdxl` does."""
    (request,) = plan_gen(["x"], None, None, _flags(model="flux-dev", outdir=str(tmp_path))).requests
    assert request.model.model == "black-forest-labs/FLUX.1-dev" and request.width == 1024


def test_kandinsky_inpaint_uses_the_inpainting_decoder(home):
    settings, preset = task_settings(_flags(preset="kandinsky22"), "inpaint_model")
    assert preset == "kandinsky22"
    assert settings["model"] == "kandinsky-community/kandinsky-2-2-decoder-inpaint"
    # Text to image keeps the plain decoder.
    settings, _ = task_settings(_flags(preset="kandinsky22"))
    assert settings["model"] == "kandinsky-community/kandinsky-2-2-decoder"


@pytest.mark.parametrize("name", ["sd35-medium", "sd35-large", "flux-dev", "flux-schnell", "pixart-sigma",
                                  "kandinsky22"])
def test_the_preset_repo_is_the_one_the_family_completes_single_files_with(name):
    """The registry and the presets name the same repos, so a single file and the preset agree on configs."""
    family, repo = PRESETS[name][:2]
    assert repo in families.get(family).config_repos.values()

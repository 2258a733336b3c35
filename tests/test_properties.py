"""Property tests: any settings, prompt file or image metadata gives a valid request or an InputError.

Requests are built from flags, presets, config files, prompt-file JSON lines and metadata anyone can
edit, so the validators must turn every value into either a request the tasks can run or one clear
error. Examples are derandomized (the same on every run and machine) and few enough for CI.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dreamcli.cli.gen import check_image_metadata, check_image_settings, image_settings
from dreamcli.cli.image_common import build_request
from dreamcli.errors import InputError
from dreamcli.io.metadata import a1111_parameters, parse_a1111_parameters, parse_record, read_metadata
from dreamcli.limits import max_pixels
from dreamcli.prompt_file import LINE_KEYS, parse_prompt_lines
from dreamcli.requests import (
    MAX_NUM_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MODEL_SETTINGS,
    SCHEDULERS,
    SETTING_TO_FIELD,
    ColorizeRequest,
    GenRequest,
    InpaintRequest,
    OutpaintRequest,
    TuneConfig,
    UpscaleRequest,
    gen_request_from,
    model_options_from,
)

PROFILE = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEW = settings(PROFILE, max_examples=60)  # for examples that write a file each

# Text without lone surrogates: nothing a file, flag or JSON decoder can hand over contains them.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
# Values a user could plausibly mean, so that examples get past the type checks to the range checks.
PLAUSIBLE = st.sampled_from([
    0, 1, 2, 7, 8, 30, 64, 100, 512, 1000, 1001, 10_000, 10_001, 16_384, 16_392, 2**31, MAX_SEED, -1,
    0.0, 0.3, 0.7, 1.0, 1.5, 7.5, -0.5, 1e300, "", "x", "euler", "lcm", "warp", "cpu", "cuda:1", "tpu", "fp16",
    "auto", "m", "lora.safetensors", "lora.safetensors:0.5", "a\x00b", True, False, None,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), TEXT,
)
VALUES = st.one_of(
    PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, SCALARS,
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                 max_leaves=4),
)
GEN_KEYS = sorted(set(SETTING_TO_FIELD) | set(MODEL_SETTINGS))
SWITCH = st.one_of(st.none(), st.booleans())
# A valid value per setting, so that examples combining several settings also reach acceptance.
GOOD = {
    "prompt": TEXT, "negative": TEXT, "steps": st.integers(1, 1000), "guidance": st.floats(0, 30),
    "guidance_rescale": st.floats(0, 1), "width": st.sampled_from([8, 64, 512, 1024, 4096]),
    "height": st.sampled_from([8, 64, 768, 4096]), "num_images": st.integers(1, 4),
    "seed": st.integers(0, MAX_SEED - 4), "model": st.just("m"), "model_config": st.sampled_from([None, "cfg"]),
    "scheduler": st.sampled_from([None, *SCHEDULERS]), "device": st.sampled_from(["auto", "cpu", "cuda:0", "mps"]),
    "dtype": st.sampled_from(["auto", "fp16", "bf16"]), "lora": st.lists(st.sampled_from(["l", "l:0.5", "d:x"])),
    "offload": st.sampled_from([None, True, False, "auto", "none", "model", "sequential", "group"]),
    "quantize": st.sampled_from([None, "auto", "none", "fp8", "nf4", "int8"]), "no_t5": SWITCH,
    "vae_tiling": SWITCH, "attention_slicing": SWITCH, "allow_unsafe_pickle": SWITCH,
    "hires": st.sampled_from([None, 0, 1, 1.5, 2]), "hires_upscaler": st.sampled_from(["latent", "Lanczos"]),
    "hires_strength": st.floats(0.05, 1), "hires_steps": st.sampled_from([None, 10, 30]),
    "compile": SWITCH, "channels_last": SWITCH, "fuse_qkv": SWITCH,
    "embedding": st.sampled_from([None, []]),  # a real one must exist: tests/test_embeddings.py
}


def gen_settings(max_size: int):
    """Settings dicts (short names): mostly valid values, with any value anywhere."""
    value = {key: st.one_of(GOOD[key], GOOD[key], VALUES) for key in GEN_KEYS}
    keys = st.lists(st.sampled_from(GEN_KEYS), max_size=max_size, unique=True)
    return keys.flatmap(lambda chosen: st.fixed_dictionaries({key: value[key] for key in chosen}))


def assert_valid_gen(request: GenRequest) -> None:
    """What every accepted request promises the tasks and the image records."""
    assert isinstance(request.prompt, str) and isinstance(request.negative_prompt, str)
    assert 1 <= request.num_inference_steps <= MAX_STEPS
    assert math.isfinite(request.guidance_scale) and request.guidance_scale >= 0
    assert 0 <= request.guidance_rescale <= 1
    assert 1 <= request.num_images <= MAX_NUM_IMAGES
    for side in (request.width, request.height):
        assert side is None or (type(side) is int and 8 <= side <= MAX_SIDE and side % 8 == 0)
    if request.width and request.height:
        assert request.width * request.height <= max_pixels()
    assert request.seed is None or 0 <= request.seed <= MAX_SEED - request.num_images
    assert all(math.isfinite(lora.scale) for lora in request.model.loras)
    assert "\x00" not in request.model.model
    json.dumps(request.to_dict(), allow_nan=False)  # the record written into every image is strict JSON


@PROFILE
@given(gen_settings(8), st.booleans())
def test_gen_settings_give_a_request_or_an_input_error(values, with_model):
    values = {"prompt": "a red circle", **({"model": "m"} if with_model else {}), **values}
    try:
        request = gen_request_from(values)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    assert_valid_gen(request)


IMAGE_FIELDS = {
    InpaintRequest: ["mask", "mask_blur", "invert_mask", "strength", "width", "height"],
    OutpaintRequest: ["left", "right", "top", "bottom", "strength", "max_pixels"],
    ColorizeRequest: ["color_prompt", "strength", "controlnet", "controlnet_conditioning_scale", "width", "height"],
    UpscaleRequest: ["scale", "strength", "tile", "overlap", "noise_level", "max_pixels"],
}


@PROFILE
@given(st.sampled_from(sorted(IMAGE_FIELDS, key=lambda c: c.__name__)), st.data())
def test_image_requests_give_a_request_or_an_input_error(cls, data):
    """As the image commands build them: merged settings plus the command's own flags."""
    values = data.draw(gen_settings(6), "settings")
    own = data.draw(st.dictionaries(st.sampled_from(IMAGE_FIELDS[cls] + ["image", "prompt"]), VALUES, max_size=5),
                    "fields")
    fields = {"image": "in.png", "prompt": "", **({"mask": "mask.png"} if cls is InpaintRequest else {}), **own}
    # The commands always pass these (typer requires the image; a missing mask or prompt is passed as "").
    fields = {k: ("" if v is None and k in ("image", "mask", "prompt") else v) for k, v in fields.items()}
    try:
        request = build_request(cls, {"model": "m", **values}, **fields)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    assert 1 <= request.num_inference_steps <= MAX_STEPS
    assert math.isfinite(request.guidance_scale) and math.isfinite(request.strength) and 0 < request.strength <= 1
    assert 1 <= request.num_images <= MAX_NUM_IMAGES
    if cls is InpaintRequest:
        assert math.isfinite(request.mask_blur) and 0 <= request.mask_blur
    json.dumps(request.to_dict(), allow_nan=False)


TUNE_FIELDS = sorted(f for f in TuneConfig.__dataclass_fields__ if f not in ("instance_data_dir", "class_word"))


@PROFILE
@given(st.dictionaries(st.sampled_from(TUNE_FIELDS), VALUES, max_size=6))
def test_tune_configs_give_a_config_or_an_input_error(values):
    base = {"instance_data_dir": "photos", "class_word": "dog", "model": "m", "output_dir": "run"}
    try:
        config = TuneConfig(**{**base, **values})
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    for name in ("learning_rate", "prior_loss_weight", "class_guidance", "alpha"):
        assert math.isfinite(getattr(config, name))
    assert config.alpha > 0 and config.learning_rate > 0
    json.dumps(config.to_dict(), allow_nan=False)


def json_line(data: dict) -> str:
    return json.dumps(data)  # NaN and Infinity included: Python's reader takes them, as a user's file may hold


LINES = st.one_of(
    TEXT,
    st.sampled_from(["", "# a comment", "{", "[1]", '{"prompt": null}', '{"prompt": ' * 3000 + '1' + '}' * 3000,
                     '{"prompt": "x", "steps": 1' + "0" * 5000 + "}", '{"prompt": "x", "guidance": NaN}']),
    st.dictionaries(st.sampled_from(sorted(LINE_KEYS) + ["stesp"]), VALUES, max_size=5).map(json_line),
)


@PROFILE
@given(st.lists(LINES, max_size=6))
def test_prompt_files_give_requests_or_an_input_error(lines):
    """Parsed as `dream gen --prompts` does, each line then built into a request."""
    try:
        items = parse_prompt_lines("\n".join(lines), "prompts.txt")
        requests = [gen_request_from({"model": "m", "steps": 30, **item}) for item in items]
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    assert requests
    for request in requests:
        assert_valid_gen(request)


@PROFILE
@given(st.one_of(TEXT, st.text(st.sampled_from('Steps: ,"\\\nNegative prompt:ab1'), max_size=60)))
def test_a1111_text_parses_into_text_fields(text):
    parsed = parse_a1111_parameters(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())
    assert isinstance(parsed["prompt"], str) and isinstance(parsed["negative_prompt"], str)


def test_a1111_text_of_a_huge_edited_line_parses_in_linear_time():
    """A megabyte-long settings line parses at once (the old findall backtracked for hours)."""
    import time

    started = time.perf_counter()
    for tail in ("a " * 500_000, "a" * 1_000_000, 'A: "' + "\\" * 1_000_000):
        parse_a1111_parameters("a cat\nSteps: 20, " + tail)
    assert time.perf_counter() - started < 5


REQUEST_KEYS = ["prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "guidance_rescale", "width",
                "height", "model"]
MODEL_KEYS = ["model", "model_config", "scheduler", "loras", "dtype"]


def records():
    """dreamcli records: a real one's shape with any field replaced, dropped, or the whole made of anything."""
    good_model = {"model": "m", "model_config": None, "scheduler": None, "loras": [], "dtype": "auto"}
    good = {"prompt": "a cat", "negative_prompt": "", "num_inference_steps": 20, "guidance_scale": 7.5,
            "guidance_rescale": 0.0, "width": 64, "height": 64}
    model = st.fixed_dictionaries({}, optional={k: VALUES for k in MODEL_KEYS}).map(lambda m: {**good_model, **m})
    request = st.fixed_dictionaries({"model": st.one_of(model, VALUES)},
                                    optional={k: VALUES for k in REQUEST_KEYS if k != "model"})
    request = request.map(lambda r: {**good, **r}) | VALUES
    return st.one_of(
        st.fixed_dictionaries({"request": request}, optional={"seed": VALUES, "model_path": VALUES,
                                                              "versions": VALUES}),
        st.dictionaries(TEXT, VALUES, max_size=3),
    )


def a1111_texts():
    fields = st.dictionaries(st.sampled_from(["Steps", "CFG scale", "CFG rescale", "Seed", "Size", "Sampler"]),
                             st.one_of(TEXT, PLAUSIBLE.map(str), st.sampled_from(["64x64", "1x2x3", "x", "1e999"])),
                             min_size=1, max_size=4)
    line = fields.map(lambda f: ", ".join(f"{k}: {v}" for k, v in {"Steps": f.pop("Steps", "20"), **f}.items()))
    return st.one_of(TEXT, st.builds(lambda p, n, t: f"{p}\nNegative prompt: {n}\n{t}", TEXT, TEXT, line))


@PROFILE
@given(st.one_of(st.none(), records()), st.one_of(st.none(), a1111_texts()))
def test_metadata_gives_settings_or_an_input_error(record, text):
    """What `dream gen --from` and `dream info` do with an image's metadata, whatever it holds."""
    meta = {"parameters": text, "dreamcli": record if isinstance(record, dict) else None}
    try:
        found = image_settings("image.png", meta)
        check_image_settings("image.png", found)
        check_image_metadata("image.png", meta)
    except InputError as e:
        assert str(e).startswith("image.png") and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    request = gen_request_from({"model": "-", **found}, model_options_from({"model": "-", **found}))
    assert_valid_gen(request)


@PROFILE
@given(st.one_of(TEXT, st.binary(max_size=20),
                st.sampled_from(["[1]", "{", "[" * 5000 + "]" * 5000, '{"a": 1}', b"\xff\xfe", 5, None])))
def test_dreamcli_blobs_read_as_a_dict_or_nothing(blob):
    record = parse_record(blob)
    assert record is None or isinstance(record, dict)


@FEW
@given(st.one_of(st.none(), TEXT, a1111_texts()), st.one_of(st.none(), TEXT, records().map(json.dumps)))
def test_png_text_chunks_read_as_metadata_or_an_input_error(text, blob):
    """The same through a real PNG file: text chunks written as any tool could, read back by read_metadata."""
    info = PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    if blob is not None:
        info.add_text("dreamcli", blob)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "edited.png")
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        meta = read_metadata(path)
        assert meta["dreamcli"] is None or isinstance(meta["dreamcli"], dict)
        if not meta["parameters"] and not meta["dreamcli"]:
            return
        try:
            check_image_metadata(path, meta)
        except InputError as e:
            assert str(e).startswith(path) and "\n" not in str(e)


@PROFILE
@given(st.integers(1, MAX_STEPS), st.integers(0, 2**32), st.integers(1, 64), st.integers(1, 64), TEXT)
def test_a1111_text_remakes_steps_seed_and_size(steps, seed, w8, h8, prompt):
    """`--from` an image with only A1111 text (another tool's, or dreamcli's own) re-makes the same numbers."""
    width, height = 8 * w8, 8 * h8
    request = GenRequest(prompt=prompt, model=model_options_from({"model": "m"}), num_inference_steps=steps,
                         width=width, height=height, seed=seed)
    record = {"request": request.to_dict(), "seed": seed, "width": width, "height": height,
              "versions": {"dreamcli": "0"}}
    found = image_settings("image.png", {"parameters": a1111_parameters(record), "dreamcli": None})
    assert (found["steps"], found["seed"], found["width"], found["height"]) == (steps, seed, width, height)

"""Textual-inversion embeddings: made by the test from a model's own token vectors, so the answer is known.

An embedding whose vectors are the token vectors of "red circle" makes "a WORD on a blue background" the same
text-encoder input as "a red circle on a blue background": the pictures must be equal, pixel for pixel.
"""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import pixels, written
from image_task_helpers import assert_refused

PROMPT = "a red circle on a blue background"


def token_vectors(tokenizer, encoder, words: str) -> torch.Tensor:
    ids = tokenizer(words, add_special_tokens=False).input_ids
    return encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture(scope="module")
def demo_vectors():
    from dreamcli.config import merge_settings
    from dreamcli.engine import load_model
    from dreamcli.requests import model_options_from

    settings, _ = merge_settings({})
    pipe = load_model(model_options_from(settings)).pipe
    return token_vectors(pipe.tokenizer, pipe.text_encoder, "red circle")


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    (folder / "embeddings").mkdir(parents=True)
    monkeypatch.setenv("DREAMCLI_HOME", str(folder))
    return folder


def run(cli, tmp_path, *args):
    outdir = tmp_path / "out"
    return cli("gen", *args, "-s", 3, "--steps", 8, "-o", outdir, "-q"), outdir


def one(result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_a_named_embedding_in_the_prompt_is_its_words(cli, tmp_path, home, demo_vectors):
    save_file({"emb_params": demo_vectors}, str(home / "embeddings" / "redthing.safetensors"))  # A1111's layout
    plain = one(run(cli, tmp_path, PROMPT)[0])
    result, _ = run(cli, tmp_path, "a redthing on a blue background")
    made = one(result)
    assert np.array_equal(pixels(made), pixels(plain))
    record = json.loads(Image.open(made).info["dreamcli"])
    assert set(record["embeddings"]) == {"redthing"} and len(record["embeddings"]["redthing"]) == 12
    assert 'TI hashes: "redthing: ' in Image.open(made).info["parameters"]
    again = one(cli("gen", "--from", made, "-o", tmp_path / "again", "-q"))
    assert np.array_equal(pixels(again), pixels(made))


def test_an_a1111_pt_file_given_with_a_word_loads_tensors_only(cli, tmp_path, home, demo_vectors):
    pt = tmp_path / "old-style.pt"
    torch.save({"string_to_param": {"*": demo_vectors}, "name": "old-style", "step": 1000}, pt)
    plain = one(run(cli, tmp_path, PROMPT)[0])
    made = one(run(cli, tmp_path, "a rc on a blue background", "--embedding", f"{pt}:rc")[0])
    assert np.array_equal(pixels(made), pixels(plain))
    weighted = one(run(cli, tmp_path, "a (rc:1.3) on a blue background", "--embedding", f"{pt}:rc")[0])
    assert not np.array_equal(pixels(weighted), pixels(plain))  # the weight reaches the embedding's vectors


def test_a_malicious_pt_runs_nothing(cli, tmp_path, home):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"string_to_param": Payload()}))
    result, outdir = run(cli, tmp_path, "a evil", "--embedding", bad)
    assert_refused(result, outdir, "embedding evil.pt holds more than tensors", "--allow-unsafe-pickle")
    assert not marker.exists()


@pytest.mark.parametrize("args, fragments", [
    (["--embedding", "nowhere.safetensors"], ["embedding file nowhere.safetensors does not exist"]),
    (["--embedding", "WRONG"], ["does not fit this model"]),
])
def test_bad_embeddings_exit_2(cli, tmp_path, home, args, fragments):
    wrong = tmp_path / "wide.safetensors"
    save_file({"emb_params": torch.zeros(1, 7)}, str(wrong))  # not the encoder's width
    args = [str(wrong) if a == "WRONG" else a for a in args]
    result, outdir = run(cli, tmp_path, "a wide thing", *args)
    assert_refused(result, outdir, *fragments)


def test_sdxl_embeddings_fill_both_encoders(cli, tiny, tmp_path, home):
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    state = {"clip_l": token_vectors(pipe.tokenizer, pipe.text_encoder, "red"),
             "clip_g": token_vectors(pipe.tokenizer_2, pipe.text_encoder_2, "red")}
    save_file(state, str(home / "embeddings" / "reddish.safetensors"))
    base = ["-m", tiny["sdxl"], "--steps", 2, "-s", 1, "-q"]
    plain = one(cli("gen", "a red square", *base, "-o", tmp_path / "a"))
    made = one(cli("gen", "a reddish square", *base, "-o", tmp_path / "b"))
    assert np.array_equal(pixels(made), pixels(plain))
    save_file({"emb_params": state["clip_l"]}, str(home / "embeddings" / "sd1only.safetensors"))
    result = cli("gen", "a sd1only square", *base, "-o", tmp_path / "c")
    assert_refused(result, tmp_path / "c", "sd1only.safetensors is not an SDXL embedding")


def test_t5_families_refuse_an_embedding(cli, families, tmp_path, demo_vectors):
    file = tmp_path / "e.safetensors"
    save_file({"emb_params": demo_vectors}, str(file))
    outdir = tmp_path / "out"
    result = cli("gen", "a e", "-m", families["flux-schnell"], "--embedding", file, "-o", outdir, "-q")
    assert_refused(result, outdir, "embeddings need an SD 1.x, 2.x or SDXL model")
    assert written(outdir) == []


def test_an_embedding_word_inside_another_word_is_left_alone(cli, tmp_path, home, demo_vectors):
    """An embedding called "rcl" must not cut "circle" into "ci rcl e" (diffusers adds tokens that match inside
    words; A1111 matches whole words)."""
    save_file({"emb_params": demo_vectors}, str(home / "embeddings" / "rcl.safetensors"))
    before = one(run(cli, tmp_path, PROMPT)[0])
    loaded = one(run(cli, tmp_path, "a rcl on a blue background")[0])  # loads "rcl" into this process
    after = one(run(cli, tmp_path, PROMPT)[0])
    assert np.array_equal(pixels(after), pixels(before))
    assert np.array_equal(pixels(loaded), pixels(before))  # and "rcl" itself is the red circle's vectors


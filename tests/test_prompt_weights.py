"""A1111 prompt syntax: weights, BREAK, long prompts; exact where diffusers already is, honest where it cannot be."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import pixels
from dreamcli.tasks.prompt_weights import embed_prompts, parse, plain_text


def pieces(prompt):
    return [(p.text, round(p.weight, 4)) if not p.is_break else "BREAK" for p in parse(prompt)]


# ---------------------------------------------------------------- the syntax


@pytest.mark.parametrize("prompt, expected", [
    ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
    ("((x))", [("x", 1.21)]),
    ("[x]", [("x", 0.9091)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),  # nested factors multiply
    (r"\(x\) and \[y\]", [("(x) and [y]", 1.0)]),  # escaped brackets are text
    ("(unclosed", [("unclosed", 1.1)]),  # an unclosed bracket weighs to the end, as in A1111
    ("x ) y :1.2) z", [("x ) y :1.2) z", 1.0)]),  # closers with nothing open are text
    ("cat BREAK dog", [("cat", 1.0), "BREAK", ("dog", 1.0)]),
    ("BREAKFAST", [("BREAKFAST", 1.0)]),  # only the word BREAK
    ("", [("", 1.0)]),
])
def test_a1111_syntax(prompt, expected):
    assert pieces(prompt) == expected


def test_plain_text_keeps_the_words_for_t5():
    assert plain_text("a, (masterpiece:1.2), [blurry] BREAK (red) car") == "a, masterpiece, blurry red car"


# ---------------------------------------------------------------- CLIP embeddings


@pytest.fixture(scope="module")
def pipes(tiny):
    import diffusers

    return {name: diffusers.AutoPipelineForText2Image.from_pretrained(tiny[name]) for name in ("sd1", "sdxl")}


@pytest.mark.parametrize("name, encoding", [("sd1", "clip"), ("sdxl", "clip-pair")])
def test_plain_prompts_embed_exactly_as_diffusers_does(pipes, name, encoding):
    import torch

    pipe = pipes[name]
    # "(square)" makes the batch go through our encoder; the plain prompt beside it must come out as diffusers'.
    ours = embed_prompts(pipe, encoding, {"prompt": ["a red circle", "a (square)"], "negative_prompt": ["blurry"] * 2})
    theirs = pipe.encode_prompt(["a red circle"], device="cpu", num_images_per_prompt=1,
                                do_classifier_free_guidance=True, negative_prompt=["blurry"])
    assert torch.equal(ours["prompt_embeds"][:1], theirs[0])
    assert torch.equal(ours["negative_prompt_embeds"][:1], theirs[1])
    if encoding == "clip-pair":
        assert torch.equal(ours["pooled_prompt_embeds"][:1], theirs[2])
        assert torch.equal(ours["negative_pooled_prompt_embeds"][:1], theirs[3])


def test_a_weight_scales_its_tokens_and_the_chunk_keeps_its_mean(pipes):
    pipe = pipes["sd1"]
    plain = embed_prompts(pipe, "clip", {"prompt": "(a) red circle", "negative_prompt": None})["prompt_embeds"]
    weighted = embed_prompts(pipe, "clip", {"prompt": "(a) (red:1.5) circle", "negative_prompt": None})
    weighted = weighted["prompt_embeds"]
    base = pipe.encode_prompt("a red circle", device="cpu", num_images_per_prompt=1,
                              do_classifier_free_guidance=False)[0]
    a, red = (len(pipe.tokenizer(word, add_special_tokens=False).input_ids) for word in ("a", "red"))
    raw = base.clone()
    raw[0, 1:1 + a] *= 1.1  # "(a)", after BOS
    raw[0, 1 + a:1 + a + red] *= 1.5
    ratio = float(base.mean() / raw.mean())
    expected = raw * ratio if 0.2 < ratio < 5 else raw  # the tiny encoder's states centre on 0: no rescale
    assert np.allclose(weighted.detach().numpy(), expected.detach().numpy(), atol=1e-5)
    assert not np.allclose(weighted.detach().numpy(), plain.detach().numpy())


def test_the_mean_is_restored_where_the_states_have_one(pipes):
    import torch

    from dreamcli.tasks.prompt_weights import _encode_chunk

    pipe = pipes["sd1"]
    with torch.no_grad():
        pipe.text_encoder.get_submodule('final_layer_norm').bias.fill_(0.5)  # a mean, as real CLIP states have
        try:
            ids = pipe.tokenizer("a red circle", add_special_tokens=False).input_ids
            plain, _ = _encode_chunk(pipe.tokenizer, pipe.text_encoder, ids, [1.0] * len(ids), "last")
            weighted, _ = _encode_chunk(pipe.tokenizer, pipe.text_encoder, ids, [1.3] * len(ids), "last")
        finally:
            pipe.text_encoder.get_submodule('final_layer_norm').bias.zero_()
    assert abs(float(weighted.mean()) - float(plain.mean())) < 1e-5
    assert float((weighted - plain).abs().max()) > 0.1


def test_long_prompts_and_break_make_more_windows(pipes):
    pipe = pipes["sd1"]
    long = "red " * 40
    tokens = len(pipe.tokenizer(long, add_special_tokens=False).input_ids)
    assert 75 < tokens <= 150
    out = embed_prompts(pipe, "clip", {"prompt": long, "negative_prompt": None})
    assert out["prompt_embeds"].shape[1] == 2 * 77
    assert out["negative_prompt_embeds"].shape == out["prompt_embeds"].shape  # padded with empty windows
    out = embed_prompts(pipe, "clip", {"prompt": "red BREAK circle BREAK blue", "negative_prompt": "x"})
    assert out["prompt_embeds"].shape[1] == 3 * 77


def test_a_full_window_is_cut_at_its_last_comma(pipes):
    from dreamcli.tasks.prompt_weights import _chunks

    tokenizer = pipes["sd1"].tokenizer
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    head = tokenizer(", ".join(["x"] * 36), add_special_tokens=False).input_ids  # x , x , ... : 71 tokens
    assert len(head) == 71 and head[-2] == comma
    chunks = _chunks(tokenizer, ", ".join(["x"] * 36) + " y y y y y y")
    assert chunks[0][0] == head[:-1]  # the full window was cut after its last comma, not at token 75
    assert chunks[1][0] == tokenizer("x y y y y y y", add_special_tokens=False).input_ids


# ---------------------------------------------------------------- through dream gen


def test_words_past_the_first_window_change_the_picture(gen, tmp_path):
    head = "a red circle, " * 19  # 76 tokens: the window is full before the tail
    made = {}
    for name, prompt in (("head", head), ("long", head + "a blue square on a green background")):
        result, outdir = gen(prompt, "-s", 2, "-o", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        made[name] = result.stdout.strip()
    assert not np.array_equal(pixels(made["head"]), pixels(made["long"]))  # diffusers would cut the tail off


def test_the_record_keeps_the_prompt_as_typed_and_from_remakes_it(gen):
    prompt = "a (red:1.4) circle BREAK [blue] background"
    result, _ = gen(prompt, "-s", 4)
    path = result.stdout.strip()
    record = json.loads(Image.open(path).info["dreamcli"])
    assert record["request"]["prompt"] == prompt
    assert Image.open(path).info["parameters"].startswith(prompt)
    again, _ = gen("--from", path)
    assert np.array_equal(pixels(again.stdout.strip()), pixels(path))


def test_img2img_takes_weights_too(cli, tiny, tmp_path):
    from image_task_helpers import save, texture

    source = save(texture(32, 32), tmp_path / "in.png")
    outs = []
    for prompt in ("a red circle", "a (red:1.8) circle"):
        result = cli("img2img", source, prompt, "-m", tiny["sd1"], "--steps", 2, "-s", 1, "-o", tmp_path / prompt,
                     "-q")
        assert result.exit_code == 0, result.stderr
        outs.append(result.stdout.strip())
    assert not np.array_equal(pixels(outs[0]), pixels(outs[1]))


def test_t5_families_get_the_words_and_a_note(cli, families, tmp_path):
    made = []
    for prompt in ("a red circle", "a (red:1.5) circle"):
        result = cli("gen", prompt, "-m", families["flux-schnell"], "--steps", 2, "-s", 3, "-o", tmp_path / "o")
        assert result.exit_code == 0, result.stderr
        made.append((result.stdout.strip(), result.stderr))
    assert np.array_equal(pixels(made[0][0]), pixels(made[1][0]))  # the same words reach T5
    assert "note: weights and BREAK need a CLIP-only model" in made[1][1]
    assert "note:" not in made[0][1]


def test_a_t5_prompt_past_its_window_says_how_much_is_dropped(cli, families, tmp_path):
    long = "a red circle on a blue background " * 60
    result = cli("gen", long, "-m", families["flux-schnell"], "--steps", 1, "-s", 3, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert "note: the prompt is" in result.stderr and "reads 256: the last" in result.stderr


def test_a_down_weighted_colour_is_drawn_less_on_the_demo_model():
    """The demo world's reader counts red circles on 16 seeds: `(red:0.3)` must draw far fewer than plain red."""
    from dreamcli.config import merge_settings
    from dreamcli.demo.world import read
    from dreamcli.requests import gen_request_from
    from dreamcli.tasks import generate

    counts = {}
    for prompt in ("a red circle on a blue background", "a (red:0.3) circle on a blue background"):
        settings, _ = merge_settings({"prompt": prompt, "seed": 0, "num_images": 16})
        readings = [read(r.image) for r in generate(gen_request_from(settings), batch_size=16)]
        counts[prompt] = sum(r.color == "red" and r.shape == "circle" for r in readings)
        assert sum(r.shape == "circle" for r in readings) >= 12  # still circles: only the colour was weighed down
    plain, weak = counts.values()
    assert plain >= 12 and weak <= plain // 2, counts  # measured: 16 and 1

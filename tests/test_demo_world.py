"""The demo world's drawing, caption and pixel-reader pieces, and its tokenizer."""

import random

import pytest

from dreamcli.demo.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer
from dreamcli.demo.world import COLORS, VOCABULARY, Scene, draw, random_scene, read


def test_reader_reads_back_every_attribute_of_drawn_scenes():
    rng = random.Random(7)
    scenes = [random_scene(rng) for _ in range(120)]
    for scene in scenes:
        reading = read(draw(scene, 128, rng))
        assert (reading.background, reading.color, reading.shape, reading.position, reading.size) == (
            scene.background, scene.color, scene.shape, scene.position, scene.size), scene


def test_reader_reports_no_shape_on_a_flat_picture():
    from PIL import Image

    reading = read(Image.new("RGB", (64, 64), COLORS["green"]))
    assert reading.background == "green" and reading.shape is None and reading.color is None


def test_captions_use_the_right_article_and_drop_attributes_only_with_rng():
    scene = Scene("circle", "orange", "blue", "left", "large")
    assert scene.caption() == "a large orange circle on the left on a blue background"
    assert Scene("square", "orange", "white", "top", "small").caption(random.Random(3)).split()[0] in {"a", "an"}
    dropped = {Scene("circle", "orange", "blue", "left", "large").caption(random.Random(i)) for i in range(50)}
    assert "an orange circle" in dropped or any(c.startswith("an orange circle") for c in dropped)
    assert len(dropped) > 5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return load_tokenizer(folder)


def test_every_vocabulary_word_is_a_single_token(tokenizer):
    split = {w: tokenizer.tokenize(w) for w in VOCABULARY if len(tokenizer.tokenize(w)) != 1}
    assert split == {}


def test_longest_caption_fits_and_unknown_words_still_tokenize(tokenizer):
    longest = max((random_scene(random.Random(i)).caption() for i in range(200)), key=len)
    assert len(tokenizer(longest).input_ids) <= MAX_LENGTH
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]

"""The gallery page (`dream gallery`, and the server's GET /): pictures newest first with their parameters."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dreamcli.io.gallery import page
from dreamcli.io.metadata import save_options
from dreamcli.io.outputs import save_atomic

CHROMIUM = "/usr/bin/chromium"
XSS = '<script>document.title="owned"</script><img src=x onerror=alert(1)> & "quoted"'


def a_record(prompt: str, seed: int, negative: str = "blurry, text", **changes) -> dict:
    """A record as `dream gen` writes it (the keys dream info and the A1111 text read)."""
    record = {
        "request": {
            "prompt": prompt, "negative_prompt": negative, "num_inference_steps": 2, "guidance_scale": 6.5,
            "guidance_rescale": 0.0, "width": 48, "height": 32, "num_images": 1, "seed": seed,
            "model": {"model": "package:demo", "model_config": None, "scheduler": None, "loras": [],
                      "device": "auto", "dtype": "auto"},
        },
        "seed": seed, "index": 0, "width": 48, "height": 32, "model": "package:demo", "model_name": "dreamcli-demo",
        "model_hash": "5e1f00d2", "family": "sd1", "guidance": "cfg", "scheduler": "EulerAncestralDiscreteScheduler",
        "sampler": "Euler a", "device": "cpu", "dtype": "fp32", "versions": {"dreamcli": "0.1.0"},
    }
    record.update(changes)
    return record


def dream_image(folder: Path, prompt: str, seed: int, colour=(200, 30, 30), fmt: str = "png", **changes) -> Path:
    """A picture written as dream writes it: next counter, atomic, with both metadata chunks."""
    return save_atomic(Image.new("RGB", (48, 32), colour), folder, seed, prompt, fmt,
                       **save_options(a_record(prompt, seed, **changes), fmt))


def record_only_image(path: Path, record) -> Path:
    """A PNG whose dreamcli record was edited by hand (no A1111 text: dream could not have formatted one)."""
    info = PngInfo()
    info.add_text("dreamcli", json.dumps(record))
    Image.new("RGB", (24, 24), (90, 90, 90)).save(path, pnginfo=info)
    return path


def other_tool_image(path: Path, parameters: str, colour=(30, 30, 200)) -> Path:
    """A PNG from A1111 or another tool: only the `parameters` text."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (40, 40), colour).save(path, pnginfo=info)
    return path


def figures(text: str) -> list[str]:
    """The file names of the pictures on a page, in page order."""
    return [html.unescape(name) for name in re.findall(r'<figure id="([^"]*)"', text)]


def card(text: str, name: str) -> str:
    """The HTML of one picture's card, unescaped to the text a reader sees."""
    start = text.index(f'<figure id="{html.escape(name)}"')
    return html.unescape(text[start:text.index("</figure>", start)])


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """Three dream pictures, one JPEG from dream, and one PNG from another tool."""
    folder = tmp_path / "run"
    folder.mkdir()
    dream_image(folder, "a red circle", 11)
    dream_image(folder, "a green square", 12, colour=(30, 200, 30))
    dream_image(folder, "a blue triangle", 13, colour=(30, 30, 200), fmt="jpg")
    other_tool_image(folder / "from-a1111.png",
                     "a castle on a hill, (masterpiece)\nNegative prompt: lowres\n"
                     'Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 987654, Size: 40x40, '
                     'Model hash: 0123abcd, Model: dreamshaper_8, Lora hashes: "x: 1, y: 2"')
    return folder


def test_page_shows_each_picture_newest_first_with_its_parameters(run_folder):
    text = page(run_folder, lambda path: f"/files/{path.name}")
    # dream's counter decides the order; the file without one follows.
    assert figures(text) == ["00002-13-a-blue-triangle.jpg", "00001-12-a-green-square.png", "00000-11-a-red-circle.png",
                             "from-a1111.png"]
    assert re.findall(r'<img src="([^"]*)"', text) == [f"/files/{name}" for name in figures(text)]
    assert "4 images, newest first" in text

    red = card(text, "00000-11-a-red-circle.png")
    assert '<p class="prompt">a red circle</p>' in red
    assert "Negative: blurry, text" in re.sub(r"<[^>]+>", "", red)
    for label, value in (("Seed", "11"), ("Steps", "2"), ("Guidance", "6.5"), ("Sampler", "Euler a"),
                         ("Size", "48x32"), ("Model", "dreamcli-demo"), ("Model hash", "5e1f00d2")):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in red
    assert f"dream gen --from {run_folder / '00000-11-a-red-circle.png'}" in red
    assert "Steps: 2, Sampler: Euler a, CFG scale: 6.5, Seed: 11, Size: 48x32" in red  # the A1111 text, to copy

    blue = card(text, "00002-13-a-blue-triangle.jpg")  # the record read from a JPEG's EXIF
    assert '<p class="prompt">a blue triangle</p>' in blue and "<dt>Seed</dt><dd>13</dd>" in blue

    castle = card(text, "from-a1111.png")
    assert '<p class="prompt">a castle on a hill, (masterpiece)</p>' in castle
    assert "Negative: lowres" in re.sub(r"<[^>]+>", "", castle)
    for label, value in (("Seed", "987654"), ("Steps", "25"), ("Guidance", "5.5"), ("Sampler", "DPM++ 2M Karras"),
                         ("Size", "40x40"), ("Model", "dreamshaper_8")):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in castle
    assert f"dream gen --from {run_folder / 'from-a1111.png'}" in castle


def test_files_without_a_counter_follow_by_modification_time(tmp_path):
    for age, name in ((300, "old.png"), (100, "new.png"), (200, "middle.png")):
        path = other_tool_image(tmp_path / name, f"{name} prompt\nSteps: 20, Seed: 1")
        os.utime(path, (time.time() - age, time.time() - age))
    dream_image(tmp_path, "counted", 3)
    assert figures(page(tmp_path, str)) == ["00000-3-counted.png", "new.png", "middle.png", "old.png"]


def test_prompts_and_file_names_are_shown_as_text_never_as_markup(tmp_path):
    dream_image(tmp_path, XSS, 5, negative="</p><script>alert(2)</script>")
    odd_name = other_tool_image(tmp_path / 'x"><script>alert(3)<.png', f"{XSS}\nSteps: 20, Seed: 9")
    text = page(tmp_path, lambda path: path.name)
    assert "<script" not in text.lower()
    assert text.count("<img ") == 2  # only the two thumbnails: the prompt's <img onerror=...> is text
    assert html.escape(XSS) in text
    assert html.escape(odd_name.name) in text and odd_name.name not in text
    assert f'<p class="prompt">{html.escape(XSS)}</p>' in text


def test_unreadable_and_odd_files_are_skipped_and_listed(tmp_path):
    dream_image(tmp_path, "a good picture", 1)
    good = dream_image(tmp_path, "cut short", 2)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "not-a-picture.png").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / ".dream-0a1b2c.png.part").write_bytes(good.read_bytes())  # a write in progress
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder with an image's name
    (tmp_path / "link.png").symlink_to(good)
    Image.new("RGB", (16, 16)).save(tmp_path / "plain.png")  # a picture with no parameters: shown, marked
    text = page(tmp_path, lambda path: path.name)
    assert sorted(figures(text)) == ["00000-1-a-good-picture.png", "00001-2-cut-short.png", "plain.png"]
    assert "3 images, newest first; 3 files could not be read" in text
    skipped = text[text.index("Files not shown"):]
    assert all(name in skipped for name in ("truncated.png", "not-a-picture.png", "empty.jpg"))
    assert "No generation parameters in this file." in card(text, "plain.png")


@pytest.mark.parametrize("changes, shown", [
    ({"request": ["not", "an", "object"]}, "No generation parameters in this file."),
    ({"request": {"prompt": {"nested": [1, 2]}, "model": "a string", "num_inference_steps": "many"}},
     '<p class="prompt">{"nested": [1, 2]}</p>'),
    ({"request": {"prompt": None}, "seed": None, "width": [1], "versions": 7}, "<dt>Model</dt><dd>dreamcli-demo</dd>"),
    ({"seed": 2 ** 80, "sampler": ["x"], "model_name": {"a": 1}}, "<dt>Seed</dt><dd>1208925819614629174706176</dd>"),
])
def test_edited_records_show_what_they_say_and_never_break_the_page(tmp_path, changes, shown):
    record_only_image(tmp_path / "00000-4-edited.png", {**a_record("edited by hand", 4), **changes})
    dream_image(tmp_path, "untouched", 5)
    text = page(tmp_path, lambda path: path.name)
    assert figures(text) == ["00001-5-untouched.png", "00000-4-edited.png"]
    assert '<p class="prompt">untouched</p>' in text
    assert shown in text.replace("&quot;", '"')


def test_an_image_task_output_shows_its_task_and_points_to_dream_info(tmp_path):
    # inpaint, outpaint, colorize and upscale records also need their input pictures: `gen --from` cannot redo them.
    path = dream_image(tmp_path, "a red circle", 7, task="upscale", pipeline="StableDiffusionUpscalePipeline")
    text = card(page(tmp_path, str), path.name)
    assert "<dt>Task</dt><dd>upscale</dd>" in text
    assert f"dream info {path}" in text and "dream gen --from" not in text


def test_a_picture_changed_in_place_shows_its_new_parameters(tmp_path):
    path = dream_image(tmp_path, "first version", 1)
    assert "first version" in page(tmp_path, str)
    other = dream_image(tmp_path, "second version, longer prompt", 2)
    os.replace(other, path)
    text = page(tmp_path, str)
    assert "second version, longer prompt" in text and "first version" not in text


def test_gallery_module_loads_without_torch_or_diffusers():
    code = "import sys, dreamcli.io.gallery; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- dream gallery ----


def test_cli_writes_folder_index_and_prints_its_path(cli, run_folder):
    result = cli("gallery", run_folder)
    assert result.exit_code == 0, result.stderr
    out = run_folder / "index.html"
    assert result.stdout == f"{out}\n"
    text = out.read_text(encoding="utf-8")
    assert len(figures(text)) == 4
    # Links are relative to the page, so the folder can be moved or zipped and opened anywhere.
    assert 'src="00000-11-a-red-circle.png"' in text
    assert not [p.name for p in run_folder.iterdir() if p.name.startswith(".")]  # no temporary file left

    dream_image(run_folder, "a new picture", 14)
    result = cli("gallery", run_folder)  # a page dream wrote is replaced: re-run after more pictures
    assert result.exit_code == 0
    assert figures(out.read_text(encoding="utf-8"))[0] == "00003-14-a-new-picture.png"


def test_cli_output_elsewhere_links_back_to_the_pictures(cli, tmp_path):
    folder = tmp_path / "my run #1"
    folder.mkdir()
    name = dream_image(folder, "a red circle", 1).name
    out = tmp_path / "sheets" / "today.html"
    result = cli("gallery", folder, "-o", out)
    assert result.exit_code == 0 and result.stdout == f"{out}\n"
    src = re.search(r'<img src="([^"]*)"', out.read_text(encoding="utf-8")).group(1)
    assert src == f"../my%20run%20%231/{name}"
    assert (out.parent / unquote(src)).resolve() == (folder / name).resolve()


def test_cli_never_overwrites_a_file_it_did_not_write(cli, run_folder):
    mine = run_folder / "index.html"
    mine.write_text("<html>my own notes</html>")
    result = cli("gallery", run_folder)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {mine} exists and is not a page dream gallery wrote: choose another file with -o, "
        "or pass --force to replace it"]
    assert mine.read_text() == "<html>my own notes</html>"
    result = cli("gallery", run_folder, "--force")
    assert result.exit_code == 0 and len(figures(mine.read_text(encoding="utf-8"))) == 4


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_cli_bad_folder_is_one_line_and_exit_2(cli, tmp_path, kind):
    target = tmp_path / "nowhere"
    if kind == "file":
        target.write_text("x")
    result = cli("gallery", target)
    assert result.exit_code == 2 and result.stdout == ""
    expected = (f"folder {target} does not exist" if kind == "missing" else f"{target} is not a folder")
    assert result.stderr.startswith(f"error: {expected}: give the folder of images")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_output_that_is_a_folder_is_refused(cli, run_folder, tmp_path):
    result = cli("gallery", run_folder, "-o", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path} is a folder: give -o a file name")


def test_cli_empty_folder_writes_an_empty_page(cli, tmp_path):
    result = cli("gallery", tmp_path)
    assert result.exit_code == 0
    assert "No images in this folder yet." in (tmp_path / "index.html").read_text(encoding="utf-8")
    assert f"no images in {tmp_path} yet" in result.stderr


# ---- in a real browser ----

# Added to a copy of the page for the test only (the page itself has no script): once every picture has
# loaded or failed, it writes how many decoded (a real width) and what the reader sees, for --dump-dom.
PROBE = """<script>
addEventListener("load", () => {
  const decoded = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({decoded, images: document.images.length, title: document.title,
                                    scripts: document.scripts.length, text: document.body.innerText});
  document.body.append(out);
});
</script>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs headless Chromium (Debian's apt package `chromium`)")
def test_page_in_headless_chromium_decodes_every_picture_and_shows_every_prompt(cli, tmp_path):
    folder = tmp_path / "run & co"
    folder.mkdir()
    prompts = ["a red circle", "a green square on a grey floor", XSS]
    for seed, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        dream_image(folder, prompts[seed], seed, colour=colour)
    dream_image(folder, "a yellow star", 9, colour=(220, 220, 0), fmt="webp")
    other_tool_image(folder / "castle #2.png", "a castle on a hill\nSteps: 20, Sampler: Euler, Seed: 5, Size: 40x40")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "sheets" / "index.html"
    assert cli("gallery", folder, "-o", out).exit_code == 0
    probe = out.with_name("probe.html")  # beside the page, so its relative links resolve the same way
    probe.write_text(out.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")

    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no probe in Chromium's DOM (exit {result.returncode}): {result.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert (seen["decoded"], seen["images"]) == (5, 5)  # the broken file is listed, not shown as a broken image
    assert seen["scripts"] == 1 and seen["title"] != "owned"  # the prompt's <script> stayed text
    for prompt in [*prompts, "a yellow star", "a castle on a hill"]:
        assert prompt in seen["text"]
    assert "broken.png" in seen["text"]

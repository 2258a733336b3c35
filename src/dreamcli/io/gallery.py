"""A gallery page of a folder of images: thumbnails and each image's parameters, newest first, in one HTML file."""

from __future__ import annotations

import html
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dreamcli.errors import DreamError
from dreamcli.io.images import BROKEN
from dreamcli.io.metadata import parse_a1111_parameters, read_metadata

# What browsers show and dream or other tools write; other files in the folder are not pictures of a run.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".avif", ".gif")
# Written into every page: `dream gallery` replaces a file only when it finds this (a page it wrote before).
GENERATOR = "dreamcli gallery"
_COUNTER = re.compile(r"^(\d{5,})-")  # dream's (and A1111's) `00012-<seed>-<slug>.png`
_CACHE_MAX = 4096


@dataclass(frozen=True)
class Item:
    """One picture on the page: its file and what its metadata says, as text ready to show."""

    path: Path
    mtime: float
    fields: dict[str, str]  # label -> value, in display order; empty when the file has no parameters
    prompt: str = ""
    negative: str = ""
    parameters: str = ""  # the A1111 text, as stored or as dream's record formats it
    redo: str = ""  # a command line that re-makes or explains the picture
    source: str = ""  # "dreamcli", "a1111" or "" (no parameters)


@dataclass
class Gallery:
    """The pictures of a folder, newest first, and the image files that could not be read."""

    folder: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def page(folder: Path, link: Callable[[Path], str]) -> str:
    """One self-contained HTML page of the images in `folder`, newest first; `link(path)` is each <img> src."""
    return render(scan(folder), link)


def scan(folder: Path) -> Gallery:
    """Read every image in `folder` (not its subfolders), newest first; unreadable files are listed, not fatal.

    Newest first means the highest counter of dream's file names first; files without one follow, by
    modification time. Symbolic links are left out: the page shows what the run wrote there.
    """
    from dreamcli.limits import max_pixels

    folder = Path(folder)
    max_pixels()  # a malformed $DREAMCLI_MAX_PIXELS is one error here, not a reason to skip every file
    gallery = Gallery(folder)
    found = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # dream's temporary `.dream-*.part` files are hidden
        try:
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
        except OSError:
            continue  # removed while we looked
        found.append((path, stat))
    found.sort(key=_newest_first)
    for path, stat in found:
        try:
            gallery.items.append(_item(path, stat))
        except (DreamError, *BROKEN) as e:
            gallery.skipped.append((path, str(e) or type(e).__name__))
    return gallery


def _newest_first(entry) -> tuple:
    path, stat = entry
    counter = _COUNTER.match(path.name)
    # Counted names before the others; within each, the larger counter / later time first; then by name.
    return (0, -int(counter.group(1)), path.name) if counter else (1, -stat.st_mtime_ns, path.name)


# Reading a picture decodes it (to prove it is whole); the server shows the page again and again, so what a
# file says is kept until the file changes (its size or modification time).
_cache: dict[tuple, Item] = {}


def _item(path: Path, stat) -> Item:
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _cache.get(key)  # one lookup: the server may show pages from several threads at once
    if cached is not None:
        return Item(path, cached.mtime, cached.fields, cached.prompt, cached.negative, cached.parameters,
                    _redo(path, cached.source, cached.fields), cached.source)
    item = describe(path, read_metadata(path), stat.st_mtime)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = item
    return item


def describe(path: Path, meta: dict, mtime: float = 0.0) -> Item:
    """What to show for one picture, from read_metadata's dict. Metadata is text anyone can edit: any
    value of any type is shown as text, and a field of the wrong shape is shown as missing."""
    record = meta.get("dreamcli")
    text = meta.get("parameters") if isinstance(meta.get("parameters"), str) else None
    if isinstance(record, dict) and isinstance(record.get("request"), dict):
        fields, prompt, negative = _from_record(record)
        parameters = text if text is not None else ""
        if not parameters:
            parameters = _safe_a1111(record)
        return Item(path, mtime, fields, prompt, negative, parameters, _redo(path, "dreamcli", fields), "dreamcli")
    if text:
        fields, prompt, negative = _from_a1111(text)
        return Item(path, mtime, fields, prompt, negative, text, _redo(path, "a1111", fields), "a1111")
    return Item(path, mtime, {}, redo="")


def _from_record(record: dict) -> tuple[dict[str, str], str, str]:
    req = record["request"]
    model = req.get("model") if isinstance(req.get("model"), dict) else {}
    width, height = record.get("width", req.get("width")), record.get("height", req.get("height"))
    fields = {
        "Task": record.get("task"),
        "Seed": record.get("seed", req.get("seed")),
        "Steps": req.get("num_inference_steps"),
        "Guidance": req.get("guidance_scale"),
        "Sampler": record.get("sampler") or record.get("scheduler") or model.get("scheduler"),
        "Size": f"{_shown(width)}x{_shown(height)}" if width is not None and height is not None else None,
        "Model": record.get("model_name") or model.get("model") or record.get("model"),
        "Model hash": record.get("model_hash"),
        "LoRAs": ", ".join(_shown(x) for x in model["loras"]) if isinstance(model.get("loras"), list) else None,
        "Strength": req.get("strength"),
        "Hires": f"x{_shown(req['hires_scale'])}" if req.get("hires_scale") else None,
    }
    shown = {k: _shown(v) for k, v in fields.items() if v is not None and v != ""}
    prompt, negative = req.get("prompt"), req.get("negative_prompt")
    return shown, "" if prompt is None else _shown(prompt), _shown(negative) if negative else ""


def _from_a1111(text: str) -> tuple[dict[str, str], str, str]:
    params = parse_a1111_parameters(text)
    fields = {"Seed": "Seed", "Steps": "Steps", "Guidance": "CFG scale", "Sampler": "Sampler", "Size": "Size",
              "Model": "Model", "Model hash": "Model hash", "Strength": "Denoising strength"}
    shown = {label: params[key] for label, key in fields.items() if params.get(key)}
    return shown, params["prompt"], params["negative_prompt"]


def _safe_a1111(record: dict) -> str:
    from dreamcli.io.metadata import a1111_parameters

    try:
        return a1111_parameters(record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return ""  # an edited record lacking a key the A1111 text needs: the fields above still show


def _redo(path: Path, source: str, fields: dict) -> str:
    if not source:
        return ""
    if "Task" in fields:  # inpaint, outpaint, colorize, upscale: they also need their input pictures
        return f"dream info {shlex.quote(str(path))}"
    return f"dream gen --from {shlex.quote(str(path))}"


def _shown(value) -> str:
    """Any metadata value as one piece of text (numbers as written, other types as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool | int) or value is None:
        return json.dumps(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return repr(value)


# ---- the page ----

_CSS = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #fff; --ink: #1d1d1b; --dim: #6b6b66; --line: #deded8; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #161615; --card: #20201e; --ink: #ecece8; --dim: #a2a29b; --line: #363633; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
header h1 { font-size: 1.25rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
header p { margin: 0 0 1.25rem; color: var(--dim); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 1rem; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
         display: flex; flex-direction: column; }
figure > a { display: block; background: repeating-conic-gradient(#8882 0 25%, transparent 0 50%) 0 0 / 16px 16px; }
figure img { display: block; width: 100%; height: 270px; object-fit: contain; }
figcaption { padding: .7rem .8rem .8rem; display: flex; flex-direction: column; gap: .45rem; }
.prompt { margin: 0; font-weight: 600; white-space: pre-wrap; overflow-wrap: anywhere; }
.negative { margin: 0; color: var(--dim); white-space: pre-wrap; overflow-wrap: anywhere; }
.negative b { font-weight: 600; }
dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: .1rem .6rem; font-size: 12.5px; }
dt { color: var(--dim); }
dd { margin: 0; overflow-wrap: anywhere; }
code, pre { font: 12px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.redo { display: block; padding: .35rem .5rem; background: var(--bg); border-radius: 4px; overflow-wrap: anywhere;
        user-select: all; }
.file { color: var(--dim); font-size: 12px; overflow-wrap: anywhere; }
details summary { cursor: pointer; color: var(--dim); font-size: 12px; }
details pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: .3rem 0 0; }
.none { color: var(--dim); font-style: italic; margin: 0; }
.skipped { margin-top: 1.5rem; color: var(--dim); font-size: 12.5px; }
.skipped li { overflow-wrap: anywhere; }
"""


def render(gallery: Gallery, link: Callable[[Path], str]) -> str:
    """The page's HTML: inline CSS, no scripts, every piece of text from files and metadata escaped."""
    e = _escape
    name = gallery.folder.resolve().name or str(gallery.folder)
    count = len(gallery.items)
    summary = f"{count} image{'s' if count != 1 else ''}, newest first"
    if gallery.skipped:
        summary += f"; {len(gallery.skipped)} file{'s' if len(gallery.skipped) != 1 else ''} could not be read"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{GENERATOR}">',
        f"<title>{e(name)} · dream gallery</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{e(name)}</h1><p>{e(summary)}</p></header>",
        "<main>",
    ]
    parts += [_figure(item, link) for item in gallery.items]
    parts.append("</main>")
    if not gallery.items:
        parts.append('<p class="none">No images in this folder yet.</p>')
    if gallery.skipped:
        rows = "".join(f"<li><b>{e(p.name)}</b>: {e(why)}</li>" for p, why in gallery.skipped)
        parts.append(f'<section class="skipped"><h2>Files not shown</h2><ul>{rows}</ul></section>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _figure(item: Item, link: Callable[[Path], str]) -> str:
    e = _escape
    src = e(link(item.path))
    alt = e(item.prompt or item.path.name)
    out = [f'<figure id="{e(item.path.name)}">',
           f'<a href="{src}"><img src="{src}" alt="{alt}" decoding="async"></a>',
           "<figcaption>"]
    if item.source:
        out.append(f'<p class="prompt">{e(item.prompt)}</p>')
        if item.negative:
            out.append(f'<p class="negative"><b>Negative:</b> {e(item.negative)}</p>')
        if item.fields:
            out.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in item.fields.items()) + "</dl>")
        out.append(f'<code class="redo" title="How to make it again">{e(item.redo)}</code>')
        if item.parameters:
            out.append(f"<details><summary>Parameters (A1111)</summary><pre>{e(item.parameters)}</pre></details>")
    else:
        out.append('<p class="none">No generation parameters in this file.</p>')
    when = datetime.fromtimestamp(item.mtime).strftime("%Y-%m-%d %H:%M") if item.mtime else ""
    out.append(f'<span class="file">{e(item.path.name)}{" · " + when if when else ""}</span>')
    out += ["</figcaption>", "</figure>"]
    return "\n".join(out)


def _escape(text: str) -> str:
    # Escaped for text and for quoted attributes alike. Lone surrogates (a file name the OS gave as bytes that
    # are not UTF-8) cannot be encoded into the page: they show as the replacement character.
    return html.escape(text, quote=True).encode("utf-8", "replace").decode("utf-8")


def is_gallery(path: Path) -> bool:
    """Whether the file at `path` is a page `dream gallery` wrote (it may then be replaced)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head

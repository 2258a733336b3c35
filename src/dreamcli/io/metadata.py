"""Generation parameters stored in images: an A1111 `parameters` text and a `dreamcli` JSON record."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dreamcli.io.images import open_image, read_exif

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286  # where A1111 puts `parameters` in JPEG/WebP files
IMAGE_DESCRIPTION = 0x010E  # where we put the dreamcli JSON record in JPEG/WebP files
HIRES_UPSCALER_NAMES = {"latent": "Latent", "lanczos": "Lanczos"}  # ours -> A1111's "Hires upscaler" names


def a1111_parameters(record: dict) -> str:
    """Format a dreamcli record as A1111's `parameters` text (what civitai and PNG Info read)."""
    req = record["request"]
    if record.get("method") == "upscaler":  # an upscaler model alone: what A1111's Extras tab writes
        return (f"Postprocess upscale by: {req['scale']}, Postprocess upscaler: {record['upscaler']['name']}, "
                f"Version: dreamcli {record['versions']['dreamcli']}")
    lines = [req["prompt"]]
    if req.get("negative_prompt"):
        lines.append(f"Negative prompt: {req['negative_prompt']}")
    fields = {
        "Steps": req["num_inference_steps"],
        "Sampler": record.get("sampler", ""),
        # Flux dev's guidance is an input of the model, not classifier-free: Forge's keys say so.
        "CFG scale": f"{req['guidance_scale']:g}" if record.get("guidance", "cfg") == "cfg" else "1",
        "Distilled CFG Scale": f"{req['guidance_scale']:g}" if record.get("guidance") == "distilled" else "",
        "CFG rescale": f"{req['guidance_rescale']:g}" if req.get("guidance_rescale") else "",
        "Seed": record["seed"],
        # A hires image's Size is its first pass's, as A1111 writes it; Hires upscale says how much larger.
        "Size": "{}x{}".format(*((req["width"], req["height"]) if req.get("hires_scale") else
                                 (record["width"], record["height"]))),
        "Model hash": record.get("model_hash") or "",
        "Model": record.get("model_name") or "",
    }
    if req["model"].get("loras"):
        fields["Loras"] = '"' + ", ".join(req["model"]["loras"]) + '"'
    if record.get("embeddings"):
        fields["TI hashes"] = '"' + ", ".join(f"{k}: {v}" for k, v in record["embeddings"].items()) + '"'
    # Image-to-image records (inpaint, outpaint, colorize, upscale): the fields A1111 writes for img2img.
    if "strength" in req:
        fields["Denoising strength"] = f"{req['strength']:g}"
    if "mask_blur" in req:
        fields["Mask blur"] = f"{req['mask_blur']:g}"
    if req.get("hires_scale"):  # A1111's txt2img hires keys; its Denoising strength is the second pass's
        fields["Denoising strength"] = f"{req['hires_strength']:g}"
        fields["Hires upscale"] = f"{req['hires_scale']:g}"
        fields["Hires steps"] = req.get("hires_steps") or req["num_inference_steps"]
        fields["Hires upscaler"] = HIRES_UPSCALER_NAMES.get(req["hires_upscaler"], req["hires_upscaler"])
    if record.get("upscaler"):  # the SD upscale's first stage, as A1111's "SD upscale" script names it
        fields["SD upscale upscaler"] = record["upscaler"]["name"]
    if isinstance(record.get("control"), list):
        fields.update(a1111_control_fields(record["control"]))
    fields["Version"] = f"dreamcli {record['versions']['dreamcli']}"
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v != ""))
    return "\n".join(lines)


def a1111_control_fields(control: list[dict]) -> dict:
    """A1111's ControlNet infotext keys (`ControlNet 0: "Module: canny, Model: NAME [hash], ..."`)."""
    fields = {}
    for i, unit in enumerate(control):
        model = f"{unit.get('model_name', '')} [{unit.get('model_hash', '')}]" if unit.get("model_hash") else \
            unit.get("model_name", "")
        canny = unit.get("type") == "canny"
        parts = {
            "Module": unit.get("module", unit.get("type")),
            "Model": model,
            "Weight": f"{unit.get('scale', 1.0):g}",
            "Resize Mode": "Just Resize",
            "Processor Res": min(unit.get("map_size") or [512]),
            "Threshold A": f"{unit.get('low', 100):g}" if canny else -1,
            "Threshold B": f"{unit.get('high', 200):g}" if canny else -1,
            "Guidance Start": f"{unit.get('start', 0.0):g}",
            "Guidance End": f"{unit.get('end', 1.0):g}",
            "Pixel Perfect": False,
            "Control Mode": "ControlNet is more important" if unit.get("guess_mode") else "Balanced",
        }
        fields[f"ControlNet {i}"] = '"' + ", ".join(f"{k}: {v}" for k, v in parts.items()) + '"'
    return fields


def parse_a1111_parameters(text: str) -> dict:
    """Split A1111 `parameters` text into prompt, negative prompt and its key: value fields."""
    lines = text.strip().split("\n")
    settings = {}
    # The last line holds "Key: value, Key: "quoted, value"" pairs when it has a Steps field.
    if lines and re.match(r"^\s*Steps: ", lines[-1]):
        settings = _parse_fields(lines.pop())
    prompt, negative, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:"):].strip()
        (target if target is not None else prompt).append(line)
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), **settings}


# One `Key: value` pair at a given position. Read pair by pair with match(), skipping to the next comma
# where none fits, so the time is linear in the text: a findall over an edited megabyte-long line
# backtracked for hours. A key starts with a word character so leading spaces have one way to match.
_FIELD = re.compile(r'\s*(\w[\w ]*):\s*("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')


def _parse_fields(line: str) -> dict:
    settings, pos = {}, 0
    while pos < len(line):
        found = _FIELD.match(line, pos)
        if found is None or found.end() == pos:
            comma = line.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        key, value = found.groups()
        settings[key.strip()] = value.strip().strip('"')
        pos = found.end()
    return settings


def save_options(record: dict, fmt: str) -> dict:
    """Keyword arguments for PIL's save() that embed the record in the given format."""
    text = a1111_parameters(record)
    blob = json.dumps(record, sort_keys=True)
    if fmt == "png":
        info = PngInfo()
        info.add_text("parameters", text)
        info.add_text("dreamcli", blob)
        return {"pnginfo": info}
    exif = Image.Exif()
    # EXIF UserComment: 8-byte charset marker then UTF-16 text, as A1111 writes it.
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    exif[IMAGE_DESCRIPTION] = blob
    return {"exif": exif.tobytes(), "quality": 95}


def _decode_user_comment(raw) -> str | None:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes | bytearray):
        return None
    head, body = bytes(raw[:8]), bytes(raw[8:])
    if head.startswith(b"UNICODE"):
        for codec in ("utf-16-be", "utf-16-le"):
            try:
                return body.decode(codec)
            except UnicodeDecodeError:
                continue
    return body.decode("utf-8", "replace")


def read_metadata(path: str | Path) -> dict:
    """The `parameters` text and `dreamcli` record of an image (None where absent)."""
    image = open_image(path, upright=False)  # its size is checked before decoding: `info` on a bomb is refused
    text = image.info.get("parameters")
    blob = image.info.get("dreamcli")
    if text is None or blob is None:
        exif, exif_ifd = read_exif(image)  # a damaged EXIF block reads as empty, not as a traceback
        blob = blob or exif.get(IMAGE_DESCRIPTION)
        text = text or _decode_user_comment(exif_ifd.get(USER_COMMENT))
    return {"parameters": text if isinstance(text, str) else None, "dreamcli": parse_record(blob)}


def parse_record(blob) -> dict | None:
    """The dreamcli JSON record as a dict; None when it is missing or not a readable JSON object.

    Any tool can edit an image's text chunks: bytes that are not UTF-8, nesting too deep for the JSON
    reader, or a list where an object belongs all read as no record (`dream info` and `--from` then
    fall back to the A1111 text, or say there is nothing).
    """
    if not isinstance(blob, str | bytes | bytearray) or not blob:
        return None
    try:
        record = json.loads(blob)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return record if isinstance(record, dict) else None

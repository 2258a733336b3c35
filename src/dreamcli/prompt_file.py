"""Prompt files: one prompt per line, `#` comments, or a JSON object of request settings per line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dreamcli.errors import InputError
from dreamcli.requests import SETTING_TO_FIELD, coerce_setting, shown

# Keys a JSON line may set, by their short names and by diffusers' names.
LINE_KEYS = {**{k: k for k in SETTING_TO_FIELD}, **{v: k for k, v in SETTING_TO_FIELD.items()}}
LINE_KEYS["num-images"] = "num_images"


def read_prompt_source(source: str) -> tuple[str, str]:
    """(text, name) of a prompt file; `-` reads standard input."""
    if source == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise InputError(f"prompt file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"prompt file {path} is a folder: give a text file") from None
    except UnicodeDecodeError:
        raise InputError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"cannot read prompt file {path}: {e.strerror}") from None


def parse_prompt_lines(text: str, name: str) -> list[dict]:
    """Settings per prompt line (short names); raises InputError naming the bad line."""
    items = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            items.append({"prompt": line})
            continue
        where = f"{name} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where} is not valid JSON ({e.msg} at column {e.colno})") from None
        except ValueError:  # Python reads no integer of more than 4300 digits
            raise InputError(f"{where} has a number of more than 4300 digits: give a usual one (steps 30)") from None
        except RecursionError:
            raise InputError(f"{where} nests too deeply to read: give one flat JSON object of settings") from None
        if not isinstance(data, dict):
            raise InputError(f"{where} must be a JSON object like {{\"prompt\": \"...\"}}")
        item = {}
        for key, value in data.items():
            if key not in LINE_KEYS:
                raise InputError(f"{where}: unknown key {shown(key)}: use {', '.join(sorted(SETTING_TO_FIELD))}")
            short = LINE_KEYS[key]
            item[short] = coerce_setting(short, value, where)
        if item.get("prompt") is None:
            raise InputError(f"{where} has no \"prompt\"")
        item["_line"] = number
        items.append(item)
    if not items:
        raise InputError(f"prompt file {name} has no prompts (only blank lines or # comments)")
    return items

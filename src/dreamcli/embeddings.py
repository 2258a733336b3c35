"""Textual-inversion embeddings (A1111's `embeddings/` folder, e.g. easynegative), through diffusers'
`load_textual_inversion`.

An embedding is a few learnt token vectors and the word that calls them. `--embedding FILE[:TOKEN]` loads one
(the word is the file's name unless TOKEN says otherwise); a file in $DREAMCLI_HOME/embeddings/ is loaded when its
name appears in a prompt, as A1111 does. Loaded words stay in the tokenizer for the process, as in A1111.
`.pt`/`.bin` embeddings are pickles: they are read with torch's tensors-only loader, never a full unpickler.
"""

from __future__ import annotations

import re
from pathlib import Path

from dreamcli.errors import InputError

FOLDER = "embeddings"
SUFFIXES = (".safetensors", ".pt", ".bin")


def named_folder() -> Path:
    from dreamcli.config import dreamcli_home

    return dreamcli_home() / FOLDER


def named() -> dict[str, Path]:
    """Embeddings in $DREAMCLI_HOME/embeddings/, by file stem."""
    folder = named_folder()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in SUFFIXES and p.is_file()}


def parse(ref: str) -> tuple[Path, str]:
    """`FILE[:TOKEN]` -> (file, word); a colon that is part of the path stays in it."""
    path, sep, token = ref.rpartition(":")
    if sep and path and token and not Path(ref).exists() and re.fullmatch(r"[^/\\\s]+", token):
        return Path(path).expanduser(), token
    return Path(ref).expanduser(), Path(ref).stem


def check_ref(ref: str) -> None:
    """An --embedding value must name an existing embedding file (checked before any model loads)."""
    path, token = parse(ref)
    if not path.is_file():
        raise InputError(f"embedding file {path} does not exist: check the path")
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"embedding {path.name} is not a .safetensors, .pt or .bin embedding file")
    if not token or any(ch.isspace() for ch in token):
        raise InputError(f"embedding word {token!r} must be one word: use FILE:WORD")


def words_in(texts: list[str]) -> set[str]:
    """The words of prompts, as embedding names are matched (A1111: the name as a whole word)."""
    return {word for text in texts if text for word in re.findall(r"[\w.+-]+", text)}


def wanted(explicit: tuple[str, ...], texts: list[str]) -> list[tuple[Path, str]]:
    """(file, word) of every embedding a call needs: those given, and the named ones its prompts mention."""
    out = [parse(ref) for ref in explicit]
    given = {token for _, token in out}
    present = words_in(texts)
    out += [(path, name) for name, path in named().items() if name in present and name not in given]
    return out


def record(explicit: tuple[str, ...], texts: list[str]) -> dict[str, str]:
    """{word: A1111 short hash} of the embeddings a request used (A1111 writes them as `TI hashes`)."""
    from dreamcli.checkpoints import file_sha256

    return {token: file_sha256(path)[:12] for path, token in wanted(explicit, texts) if path.is_file()}


def apply(pipe, encoding: str, explicit: tuple[str, ...], texts: list[str], allow_unsafe_pickle: bool) -> None:
    """Load into `pipe`'s tokenizer(s) and text encoder(s) the embeddings these prompts need, once each."""
    if encoding not in ("clip", "clip-pair"):
        if explicit:  # a word in a prompt that happens to name an embedding is not a request for one here
            raise InputError("textual-inversion embeddings need an SD 1.x, 2.x or SDXL model (CLIP text encoders): "
                             "leave out --embedding")
        return
    needed = wanted(explicit, texts)
    if not needed:
        return
    # What this tokenizer has taken in (it lives as long as the loaded model, and is shared by its task pipelines).
    loaded = pipe.tokenizer.__dict__.setdefault("_dreamcli_embeddings", {})
    for path, token in needed:
        if token in loaded:
            if loaded[token] != path.resolve():
                raise InputError(f"embedding word {token!r} is already {loaded[token].name} in this process: "
                                 f"call {path.name} by another word (FILE:WORD)")
            continue
        state = read(path, allow_unsafe_pickle)
        _load(pipe, encoding, state, token, path)
        for tokenizer in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)):
            if tokenizer is not None:
                whole_words(tokenizer, token)
        loaded[token] = path.resolve()


def whole_words(tokenizer, token: str) -> None:
    """Make an embedding's tokens (WORD, WORD_1, ...) match whole words only.

    diffusers adds them as plain added tokens, which the tokenizer also finds inside other words: an embedding
    called "rc" turned every later "circle" into "ci rc le" for the rest of the process. A1111 matches whole words.
    """
    from transformers import AddedToken

    names = [name for name in tokenizer.get_added_vocab() if re.fullmatch(re.escape(token) + r"(_\d+)?", name)]
    tokenizer.add_tokens([AddedToken(name, single_word=True) for name in names])


def read(path: Path, allow_unsafe_pickle: bool = False) -> dict:
    """The file's tensors: safetensors as such, pickles through torch's tensors-only loader."""
    import pickle

    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise InputError(f"embedding {path.name} holds more than tensors ({first}), so it was not loaded: use a "
                         ".safetensors version, or --allow-unsafe-pickle if you trust its source") from None
    except Exception as e:  # truncated or not an embedding file: torch and safetensors fail in many ways
        raise InputError(f"embedding {path.name} cannot be read ({type(e).__name__}): check that the file is "
                         "complete") from None


def _load(pipe, encoding: str, state: dict, token: str, path: Path) -> None:
    """diffusers' loader, per encoder: SDXL files hold `clip_l` and `clip_g`; SD 1.x/2.x files one set."""
    try:
        if encoding == "clip-pair":
            if not {"clip_l", "clip_g"} <= set(state):
                raise InputError(f"embedding {path.name} is not an SDXL embedding (no clip_l and clip_g tensors): "
                                 "use one made for SDXL")
            pipe.load_textual_inversion(state["clip_l"], token=token, tokenizer=pipe.tokenizer,
                                        text_encoder=pipe.text_encoder)
            pipe.load_textual_inversion(state["clip_g"], token=token, tokenizer=pipe.tokenizer_2,
                                        text_encoder=pipe.text_encoder_2)
            return
        if {"clip_l", "clip_g"} <= set(state):
            raise InputError(f"embedding {path.name} is for SDXL: use it with an SDXL model")
        pipe.load_textual_inversion(state, token=token, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    except ValueError as e:  # diffusers: wrong width for this encoder, several tokens in one file, ...
        message = str(e).strip().splitlines()[0][:200]
        raise InputError(f"embedding {path.name} does not fit this model ({message}): use one made for it") from None

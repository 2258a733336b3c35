"""Prompts in AUTOMATIC1111's syntax: weights, BREAK, and prompts longer than the text encoder's window.

`(word)` multiplies a word's weight by 1.1, `((word))` by 1.21, `[word]` divides it by 1.1, `(word:1.3)` sets the
factor, `\\(` is a literal bracket, and `BREAK` starts a new chunk. A CLIP encoder reads 75 tokens at a time: a longer
prompt is cut into chunks (at the last comma when one is near the cut, as A1111 does), each encoded on its own and
then laid end to end, which the UNet's cross-attention takes at any length. Weights above 1 scale the words' vectors
(A1111's way); weights below 1 blend toward the prompt without those words (compel's way): see _encode_chunk.

CLIP families (SD 1.x, 2.x and SDXL) get all of it. The T5 families read the prompt as text and have no per-token
weights: there the syntax is taken out, leaving the words, with a note. A prompt without brackets, BREAK or excess
length goes to diffusers as it is, so plain prompts give the same pictures as before.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from dreamcli.errors import Note

ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's factors for ( ) and [ ]
BREAK = "BREAK"
COMMA_REACH = 20  # a chunk full at 75 tokens is cut after its last comma when that is at most this many tokens back
_TOKENS = re.compile(r"""
    \\[()\[\]\\]              # an escaped bracket or backslash: the character itself
  | \(|\[                     # openers
  | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ":1.3)" closes a round bracket with its own factor
  | \)|\]                     # closers
  | [^\\()\[\]:]+             # plain text
  | [:\\]                     # a lone colon or backslash is text too
""", re.VERBOSE)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


@dataclass
class Fragment:
    text: str
    weight: float = 1.0
    is_break: bool = False


def parse(prompt: str) -> list[Fragment]:
    """The prompt as (text, weight) pieces in order, BREAK as its own piece; unclosed brackets apply to the end."""
    pieces: list[Fragment] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece.weight *= factor

    for match in _TOKENS.finditer(prompt):
        token, factor = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append(Fragment(token[1]))
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif factor is not None and open_round:
            scale(open_round.pop(), float(factor))
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        elif factor is not None:  # ":1.3)" with no bracket open: text, as A1111 reads it
            pieces.append(Fragment(token))
        else:
            for i, part in enumerate(_BREAK_WORD.split(token)):
                if i:
                    pieces.append(Fragment(BREAK, 1.0, is_break=True))
                if part:
                    pieces.append(Fragment(part))
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    merged: list[Fragment] = []
    for piece in pieces:
        if merged and not piece.is_break and not merged[-1].is_break and merged[-1].weight == piece.weight:
            merged[-1].text += piece.text
        else:
            merged.append(piece)
    return merged or [Fragment("")]


def plain_text(prompt: str) -> str:
    """The words of a prompt without its weighting syntax (what a T5 encoder is given)."""
    return " ".join("".join(" " if p.is_break else p.text for p in parse(prompt)).split())


def has_syntax(prompt: str) -> bool:
    """Whether the prompt uses weighting syntax or BREAK (then it is not plain text)."""
    return any(p.is_break or p.weight != 1.0 for p in parse(prompt)) or "\\" in prompt


# ---------------------------------------------------------------- CLIP encoding


def _chunks(tokenizer, prompt: str) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights in chunks of the encoder's window less its two end tokens (75 for CLIP)."""
    size = tokenizer.model_max_length - 2
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close(keep: int | None = None) -> None:
        nonlocal ids, weights, last_comma
        head_ids, head_weights = ids[:keep], weights[:keep]
        rest_ids, rest_weights = (ids[keep:], weights[keep:]) if keep is not None else ([], [])
        chunks.append((head_ids, head_weights))
        ids, weights, last_comma = rest_ids, rest_weights, -1

    for piece in parse(prompt):
        if piece.is_break:
            close()
            continue
        for token in tokenizer(piece.text, add_special_tokens=False).input_ids:
            if token == comma:
                last_comma = len(ids)
            ids.append(token)
            weights.append(piece.weight)
            if len(ids) == size:
                # Cut after a comma near the end rather than mid-phrase; the tail starts the next chunk.
                close(last_comma + 1 if last_comma >= 0 and size - last_comma <= COMMA_REACH else None)
    if ids or not chunks:
        close()
    return chunks


def needs_embedding(tokenizer, prompt: str | None) -> bool:
    """Whether diffusers' own encoding would get the prompt wrong: syntax, or more tokens than one window."""
    if not prompt:
        return False
    if has_syntax(prompt):
        return True
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) > tokenizer.model_max_length - 2


def _encode_chunk(tokenizer, encoder, ids: list[int], weights: list[float], hidden: str):
    """One chunk through one encoder: (weighted token vectors, pooled output or None).

    Up-weights as A1111: the words' vectors are scaled and the chunk then rescaled to its former mean.
    Down-weights as compel and InvokeAI: a blend toward the chunk encoded with those words masked out. Scaling a
    word's own vectors down leaves the word in the vectors after it (CLIP attends causally, and the end tokens
    carry the whole sentence), so on the demo model `(red:0.3)` drew as many red shapes as `red`; masked, it
    draws far fewer.
    """
    import torch

    size = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    row = torch.tensor([[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [pad] * (size - len(ids) - 2)],
                       device=encoder.device)

    def run(mask=None):
        out = encoder(row, attention_mask=mask, output_hidden_states=hidden == "penultimate")
        states = out.hidden_states[-2] if hidden == "penultimate" else out[0]
        return states, out[0] if out[0].ndim == 2 else None  # SDXL's second encoder: its text_embeds

    full, full_pooled = run()
    states, pooled = full, full_pooled
    for weight in sorted({w for w in weights if w < 1}):
        mask = torch.ones_like(row)
        mask[0, [1 + i for i, w in enumerate(weights) if w == weight]] = 0
        masked, masked_pooled = run(mask)
        states = states + (masked - full) * (1 - weight)
        if pooled is not None:
            pooled = pooled + (masked_pooled - full_pooled) * (1 - weight)
    if any(w > 1 for w in weights):
        scale = torch.ones(size, device=states.device, dtype=states.dtype)
        scale[1 : 1 + len(weights)] = torch.tensor([max(w, 1.0) for w in weights], dtype=states.dtype)
        before = states.mean()
        states = states * scale[None, :, None]
        ratio = float(before / states.mean())
        # CLIP's states have a clear mean; an encoder whose states centre on 0 (a final norm without bias)
        # would turn the ratio into noise over noise: there the weights stand unrescaled.
        if 0.2 < ratio < 5:
            states = states * ratio
    return states, pooled


def _encode(pipe, pair: bool, prompt: str, chunk_count: int):
    """A prompt's embeddings, `chunk_count` windows long (empty chunks pad a shorter prompt), and SDXL's pooled."""
    import torch

    encoders = [(pipe.tokenizer, pipe.text_encoder, "penultimate" if pair else "last")]
    if pair:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2, "penultimate"))
    per_encoder, pooled = [], None
    for tokenizer, encoder, hidden in encoders:
        if encoder is None:  # SDXL refiner-style pipelines have only the second encoder
            continue
        chunks = _chunks(tokenizer, prompt)
        chunks += [([], [])] * (chunk_count - len(chunks))
        states = []
        for ids, weights in chunks:
            chunk_states, chunk_pooled = _encode_chunk(tokenizer, encoder, ids, weights, hidden)
            states.append(chunk_states)
            if pooled is None and chunk_pooled is not None:
                pooled = chunk_pooled  # the first chunk's, as A1111 takes it
        per_encoder.append(torch.cat(states, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def _chunk_count(pipe, prompts: list[str]) -> int:
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]
    return max(len(_chunks(tokenizer, p)) for tokenizer in tokenizers for p in prompts)


def embed_prompts(pipe, encoding: str, kwargs: dict) -> dict:
    """Call arguments with `prompt` / `negative_prompt` turned into embeddings where they need it.

    `encoding` is the family's: "clip" (one encoder, last hidden state: SD 1.x/2.x), "clip-pair" (SDXL's two,
    penultimate states side by side, pooled from the second) or "text" (T5 and others: syntax taken out, a note).
    """
    prompt, negative = kwargs.get("prompt"), kwargs.get("negative_prompt")
    if prompt is None:
        return kwargs
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = None if negative is None else [negative] * len(prompts) if isinstance(negative, str) else negative
    if encoding == "text":
        return _plain_for_text_encoders(pipe, kwargs, prompts, negatives, isinstance(prompt, str))
    tokenizer = pipe.tokenizer if getattr(pipe, "tokenizer", None) is not None else pipe.tokenizer_2
    if not any(needs_embedding(tokenizer, p) for p in prompts + (negatives or [])):
        return kwargs
    import torch

    if hasattr(pipe, "maybe_convert_prompt"):  # a multi-vector embedding's word becomes its N tokens, as diffusers does
        prompts = [pipe.maybe_convert_prompt(p, tokenizer) for p in prompts]
        negatives = None if negatives is None else [pipe.maybe_convert_prompt(n, tokenizer) for n in negatives]
    pair = encoding == "clip-pair"
    with torch.no_grad():
        count = _chunk_count(pipe, prompts + (negatives or [""]))
        positive = [_encode(pipe, pair, p, count) for p in prompts]
        force_zeros = pair and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
        if negatives is None and force_zeros:  # SDXL was trained with zeros for "no negative prompt"
            negative_out = [(torch.zeros_like(s), torch.zeros_like(p)) for s, p in positive]
        else:
            negative_out = [_encode(pipe, pair, n, count) for n in (negatives or [""] * len(prompts))]
    out = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
    out["prompt_embeds"] = torch.cat([s for s, _ in positive])
    out["negative_prompt_embeds"] = torch.cat([s for s, _ in negative_out])
    if pair:
        out["pooled_prompt_embeds"] = torch.cat([p for _, p in positive])
        out["negative_pooled_prompt_embeds"] = torch.cat([p for _, p in negative_out])
    return out


def _text_window(pipe, kwargs: dict):
    """(tokenizer, tokens it reads) of the encoder that reads the most of a prompt: T5 where there is one."""
    import inspect

    tokenizers = [getattr(pipe, name, None) for name in ("tokenizer_3", "tokenizer_2", "tokenizer", "prior_tokenizer")]
    tokenizers = [t for t in tokenizers if t is not None]
    if not tokenizers:
        return None, 0
    tokenizer = next((t for t in tokenizers if "T5" in type(t).__name__), tokenizers[0])
    argument = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    limit = kwargs.get("max_sequence_length") or (argument.default if argument is not None else None)
    return tokenizer, int(limit or tokenizer.model_max_length)


def _note_truncation(pipe, kwargs: dict, prompts: list[str]) -> None:
    """Say how many tokens an encoder that cannot chunk will drop (diffusers only logs it)."""
    tokenizer, limit = _text_window(pipe, kwargs)
    if tokenizer is None:
        return
    for prompt in prompts:
        count = len(tokenizer(prompt, add_special_tokens=True).input_ids)
        if count > limit:
            warnings.warn(Note(f"the prompt is {count} tokens and this model's text encoder reads {limit}: the last "
                               f"{count - limit} are dropped (shorten it, or use an SD 1.x/2.x/SDXL model, which "
                               "reads long prompts in chunks)"), stacklevel=3)
            return


def _plain_for_text_encoders(pipe, kwargs: dict, prompts: list[str], negatives: list[str] | None,
                             single: bool) -> dict:
    weighted = [p for p in prompts + (negatives or []) if p and has_syntax(p)]
    _note_truncation(pipe, kwargs, [plain_text(p) for p in prompts + (negatives or []) if p])
    if not weighted:
        return kwargs
    warnings.warn(Note("weights and BREAK need a CLIP-only model (SD 1.x, 2.x, SDXL): this model reads the prompt "
                       "as text, so the brackets were taken out and the words kept"), stacklevel=2)
    out = dict(kwargs)
    out["prompt"] = plain_text(prompts[0]) if single else [plain_text(p) for p in prompts]
    if negatives is not None:
        plain = [plain_text(n) for n in negatives]
        out["negative_prompt"] = plain[0] if isinstance(kwargs["negative_prompt"], str) else plain
    return out

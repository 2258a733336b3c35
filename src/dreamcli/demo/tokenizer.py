"""Build the demo model's CLIP tokenizer: a small BPE vocabulary where every world word is one token."""

from __future__ import annotations

import json
import string
from pathlib import Path

from .world import VOCABULARY

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Long enough for the longest caption with room for user additions ("a photo of sks shape ...").
MAX_LENGTH = 32


def write_tokenizer(folder: Path) -> None:
    """Write vocab.json and merges.txt loadable by transformers' CLIPTokenizer into folder.

    Merges are learnt with the tokenizers library's BPE trainer on the vocabulary, with enough
    room that each word ends as a single token; characters stay in the vocabulary so unknown
    words still tokenize (into pieces) instead of failing.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # a ceiling, never reached: merging stops when all words are whole
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(VOCABULARY)] * 10, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    # CLIP also knows each character as a word ending, so any typed word can be spelled out.
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0, sort_keys=True))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def load_tokenizer(folder: Path):
    """The CLIPTokenizer over files written by write_tokenizer, padded with the end token as SD1."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )

"""A hub-free CLIP tokenizer for the demo captions.

The vocabulary is byte-level BPE in CLIP's format, built in memory: every single
character (alone and as the end of a word, ``x</w>``) plus merges until each
caption word is one token; anything else falls back to characters.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from .dataset import caption_words

MAX_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Character vocabulary plus merges until every word in `words` is a single token."""
    vocab: dict[str, int] = {BOS: 0, EOS: 1}

    def add(tok: str):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(",.-'")
    for c in chars:
        add(c)
    for c in chars:
        add(c + "</w>")
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for w in words:
            toks = _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks)
            if len(toks) > 1:
                # a new merge goes last, so it never changes a word already in one piece
                pair = (toks[0], toks[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                add(pair[0] + pair[1])
                changed = True
    return vocab, merges


def build_tokenizer(max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    vocab, merges = build_vocab(caption_words())
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=max_length,
    )

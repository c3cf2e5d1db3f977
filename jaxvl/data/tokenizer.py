"""WordPiece tokenizer for the text stream (bert-base-uncased compatible), built on ``tokenizers``.

VOLTA tokenises captions with ``bert-base-uncased``'s WordPiece (lower-casing, accent stripping,
``BertPreTokenizer`` splitting on whitespace and punctuation, ``##`` continuation pieces, one
``[UNK]`` for a word that cannot be split) and feeds ``[CLS] caption [SEP]`` truncated to
``max_seq_length - 2`` sub-words and padded with 0 (``max_seq_length`` 38 in every ctrl pretraining
and ablation script; reference section 4.1).

Two ways to build one:

- ``Tokenizer.from_vocab_file(path)``: a BERT ``vocab.txt`` (one token per line, the line number is the id)
  or the same vocabulary's HF ``tokenizer.json`` (``model.vocab``). Special-token ids are looked up in the
  vocabulary, never assumed (bert-base-uncased has ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
  ``[MASK]`` 103).
- ``Tokenizer.from_words(words)``: the synthetic world's closed vocabulary. The special tokens come
  first (``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4), then the words in the given
  order, so padding with 0 (as VOLTA does) pads with ``[PAD]``.

Both produce the same ids as ``transformers.BertTokenizerFast`` built from the same vocabulary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders as _decoders
from tokenizers.models import WordPiece

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
VOLTA_MAX_SEQ_LENGTH = 38  # ctrl pretraining and the cross-modal ablation (TASK18)


def read_vocab_file(path: str | os.PathLike) -> list[str]:
    """The tokens of a BERT ``vocab.txt``, in id order (line i holds token i).

    Lines are split on ``\\n`` only (not on the other Unicode line breaks a token may contain); a
    trailing ``\\r`` is dropped; empty lines are kept as tokens so later ids do not shift.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not tokens:
        raise ValueError(f"{path}: the vocabulary file is empty")
    return tokens


def read_tokenizer_json(path: str | os.PathLike) -> list[str]:
    """The tokens of a HF ``tokenizer.json`` of a WordPiece (BERT) tokenizer, in id order (``model.vocab``:
    token -> id, ids 0..V-1 without gaps). Another tokenizer kind, or gaps, raise ``ValueError`` naming the file."""
    import json

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            model = json.load(f).get("model") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a HF tokenizer.json ({e})") from None
    vocab = model.get("vocab")
    if model.get("type") != "WordPiece" or not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: expected a WordPiece (BERT) tokenizer.json with a model.vocab table; got model "
                         f"type {model.get('type')!r}")
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{path}: model.vocab ids are not 0..{len(tokens) - 1} without gaps")
    return tokens


class Tokenizer:
    """BERT WordPiece (uncased) over a fixed vocabulary; ids equal ``BertTokenizerFast``'s.

    ``tokenize(text)`` gives the sub-word strings; ``encode(text, max_len)`` gives the model input
    ``[CLS] sub-words[:max_len - 2] [SEP]`` padded to ``max_len`` with the pad id, as int32 ``ids``
    [max_len] and ``mask`` [max_len] (1 on real tokens, 0 on padding).
    """

    def __init__(self, tokens: Sequence[str], source: str = "<vocabulary>"):
        """``tokens``: the vocabulary in id order; it must hold ``[PAD] [UNK] [CLS] [SEP] [MASK]``."""
        self.source = source
        self._tokens = list(tokens)
        vocab: dict[str, int] = {}
        dups = 0
        for i, tok in enumerate(self._tokens):
            dups += tok in vocab
            vocab[tok] = i  # the last occurrence wins, as in transformers' load_vocab
        if dups:
            log.warning("%s: %d duplicated tokens in the vocabulary (the last id of each is used)", source, dups)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{source}: the vocabulary lacks the special tokens {missing}")
        self._vocab = vocab
        tok = _HFTokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = _decoders.WordPiece(prefix="##")
        # Registered like BertTokenizerFast's special tokens: "[MASK]" written in a text stays one token.
        tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
        self._tok = tok

    # construction -----------------------------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> Tokenizer:
        """From a BERT ``vocab.txt`` (e.g. bert-base-uncased's 30,522 lines) or a HF ``tokenizer.json`` (by its
        ``.json`` suffix) of the same vocabulary."""
        read = read_tokenizer_json if os.fspath(path).endswith(".json") else read_vocab_file
        return cls(read(path), source=os.fspath(path))

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Tokenizer:
        """From a plain word list (the synthetic world): special tokens first, then each word once.

        Words must already be in normal form (lower case, no accents, no whitespace), since the
        normaliser would make any other spelling unreachable; ``##piece`` entries are allowed.
        """
        tokens = list(SPECIAL_TOKENS)
        seen = set(tokens)
        norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                          lowercase=True)
        for w in words:
            if w in seen:
                continue
            body = w[2:] if w.startswith("##") and len(w) > 2 else w
            if not body or norm.normalize_str(body) != body or any(c.isspace() for c in body):
                raise ValueError(f"word {w!r} is not a normalised (lower-case, accent-free, single) token")
            tokens.append(w)
            seen.add(w)
        return cls(tokens, source="<word list>")

    def save_vocab(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as a BERT ``vocab.txt`` (readable by ``from_vocab_file`` and transformers)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in self._tokens))

    # vocabulary -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Rows of the word-embedding table: the number of vocabulary lines."""
        return len(self._tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def tokens(self) -> list[str]:
        """The vocabulary in id order."""
        return list(self._tokens)

    @property
    def pad_id(self) -> int:
        return self._vocab[PAD]

    @property
    def unk_id(self) -> int:
        return self._vocab[UNK]

    @property
    def cls_id(self) -> int:
        return self._vocab[CLS]

    @property
    def sep_id(self) -> int:
        return self._vocab[SEP]

    @property
    def mask_id(self) -> int:
        return self._vocab[MASK]

    @property
    def unk_token(self) -> str:
        return UNK

    @property
    def mask_token(self) -> str:
        return MASK

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._vocab[t] for t in SPECIAL_TOKENS)

    def token_to_id(self, token: str) -> int:
        """The id of ``token``; the ``[UNK]`` id for a token outside the vocabulary."""
        return self._vocab.get(token, self.unk_id)

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._tokens[int(i)] for i in ids]

    # text ---------------------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """BERT normalisation (clean, space around CJK characters, lower-case, strip accents)."""
        return self._tok.normalizer.normalize_str(text)

    def tokenize(self, text: str) -> list[str]:
        """Sub-word strings of ``text``, without ``[CLS]``/``[SEP]`` (``BertTokenizer.tokenize``)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def tokenize_with_offsets(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """Sub-words with their character span ``(start, end)`` in the original ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(zip(enc.tokens, enc.offsets, strict=True))

    def token_ids(self, text: str) -> list[int]:
        """Ids of ``tokenize(text)``."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_ids(self, token_ids: Sequence[int],
                   max_len: int = VOLTA_MAX_SEQ_LENGTH) -> tuple[np.ndarray, np.ndarray]:
        """``[CLS] token_ids[:max_len - 2] [SEP]`` padded with the pad id: int32 ``ids``, ``mask`` [max_len].

        For sequences already edited at the sub-word level (e.g. a phrase replaced by ``[MASK]``).
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold [CLS] and [SEP]; got {max_len}")
        body = [int(i) for i in token_ids[: max_len - 2]]
        seq = [self.cls_id, *body, self.sep_id]
        ids = np.full((max_len,), self.pad_id, dtype=np.int32)
        mask = np.zeros((max_len,), dtype=np.int32)
        ids[: len(seq)] = seq
        mask[: len(seq)] = 1
        return ids, mask

    def encode(self, text: str, max_len: int = VOLTA_MAX_SEQ_LENGTH) -> tuple[np.ndarray, np.ndarray]:
        """VOLTA's text input: ``[CLS] tokenize(text)[:max_len - 2] [SEP]``, padded with the pad id.

        Returns int32 ``ids`` [max_len] and ``mask`` [max_len] (1 on ``[CLS]``, sub-words and ``[SEP]``).
        Segment ids are all 0 and are left to the caller.
        """
        return self.encode_ids(self.token_ids(text), max_len)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text from ids (``##`` pieces joined); special tokens dropped unless ``skip_special=False``."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

"""jaxvl's WordPiece tokenizer against transformers' BertTokenizerFast on the same vocabulary.

The real vocabulary is all-MiniLM-L6-v2's (bert-base-uncased's 30,522 WordPiece tokens), taken from
the ``tokenizer.json`` in the ``all_minilm_l6_v2`` package's ``model.zip`` (found without importing the
package) and written out as a ``vocab.txt``. The synthetic-world vocabulary is a word list.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from minilm_files import minilm_zip

from jaxvl.data.tokenizer import SPECIAL_TOKENS, VOLTA_MAX_SEQ_LENGTH, Tokenizer, read_vocab_file

transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[test]'")
tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "A man in a red shirt is riding a brown horse along the beach.",
    "Two young guys with shaggy hair look at their hands while hanging out in the yard .",
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "Several men in hard hats are operating a giant pulley system .",
    "A Café-owner's naïve résumé: 3.5 km, $20, 100% (unaffable!) — done.",
    "Tokyo 東京 and Beijing 北京 are big cities.",
    "The word [MASK] is kept whole, but [mask] is not.",
    "supercalifragilisticexpialidocious " * 3 + "x" * 120,
    "",
    "   \t  ",
    "tab\tseparated\nnew line and zero\u200bwidth space",
]


@pytest.fixture(scope="module")
def minilm_vocab(tmp_path_factory) -> Path:
    """MiniLM's WordPiece vocabulary as a bert ``vocab.txt``."""
    with zipfile.ZipFile(minilm_zip()) as zf:
        vocab = json.loads(zf.read("tokenizer.json"))["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    path = tmp_path_factory.mktemp("minilm") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def hf_bert(vocab_path: Path):
    """``BertTokenizerFast`` from a vocab file (transformers 5 takes ``vocab=``, 4 ``vocab_file=``)."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        return transformers.BertTokenizerFast(vocab=str(vocab_path))
    return transformers.BertTokenizerFast(vocab_file=str(vocab_path))


@pytest.fixture(scope="module")
def real(minilm_vocab):
    return Tokenizer.from_vocab_file(minilm_vocab), hf_bert(minilm_vocab)


def test_special_ids_from_bert_vocab(real):
    tok, hf = real
    assert tok.vocab_size == hf.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.cls_id == hf.cls_token_id and tok.sep_id == hf.sep_token_id and tok.mask_id == hf.mask_token_id


@pytest.mark.parametrize("text", SENTENCES)
def test_tokens_and_ids_equal_bert_tokenizer_fast(real, text):
    tok, hf = real
    assert tok.tokenize(text) == hf.tokenize(text)
    assert tok.token_ids(text) == hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("max_len", [VOLTA_MAX_SEQ_LENGTH, 8, 2])
def test_encode_equals_bert_tokenizer_fast(real, max_len):
    tok, hf = real
    for text in SENTENCES:
        ids, mask = tok.encode(text, max_len)
        ref = hf(text, max_length=max_len, truncation=True, padding="max_length")
        assert ids.dtype == np.int32 and ids.shape == (max_len,) and mask.shape == (max_len,)
        np.testing.assert_array_equal(ids, ref["input_ids"])
        np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_equals_shipped_tokenizer_json(real):
    tok, _ = real
    with zipfile.ZipFile(minilm_zip()) as zf:
        ref = tokenizers.Tokenizer.from_str(zf.read("tokenizer.json").decode("utf-8"))
    ref.no_truncation()
    ref.no_padding()
    for text in SENTENCES:
        assert tok.encode(text, 512)[0][: len(ref.encode(text).ids)].tolist() == ref.encode(text).ids


def test_encode_layout(real):
    tok, _ = real
    ids, mask = tok.encode("a horse", 6)
    assert ids.tolist() == [tok.cls_id, tok.token_to_id("a"), tok.token_to_id("horse"), tok.sep_id, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0]
    ids, mask = tok.encode("one two three four five", 4)  # truncated to max_len - 2 sub-words
    assert ids.tolist() == [tok.cls_id, tok.token_to_id("one"), tok.token_to_id("two"), tok.sep_id]
    assert mask.tolist() == [1, 1, 1, 1]
    assert tok.decode(tok.encode("A horse, running.", 12)[0]) == "a horse, running."
    with pytest.raises(ValueError, match="max_len"):
        tok.encode("x", 1)


def test_special_ids_are_looked_up(tmp_path, minilm_vocab):
    """A vocabulary with the special tokens moved: ids follow the file, as in BertTokenizerFast."""
    tokens = read_vocab_file(minilm_vocab)
    rest = [t for t in tokens if t not in SPECIAL_TOKENS]
    moved = rest[:50] + ["[SEP]", "[MASK]"] + rest[50:200] + ["[CLS]", "[UNK]"] + rest[200:] + ["[PAD]"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(moved) + "\n", encoding="utf-8")
    tok, hf = Tokenizer.from_vocab_file(path), hf_bert(path)
    assert (tok.sep_id, tok.mask_id, tok.cls_id, tok.unk_id, tok.pad_id) == (50, 51, 202, 203, len(moved) - 1)
    for text in SENTENCES[:6]:
        ref = hf(text, max_length=20, truncation=True, padding="max_length")
        np.testing.assert_array_equal(tok.encode(text, 20)[0], ref["input_ids"])


SYNTHETIC_WORDS = ["a", "the", "red", "blue", "cube", "sphere", "left", "of", "is", "##s", ".", ",", "big", "un",
                   "##der", "red"]


def test_synthetic_vocab(tmp_path):
    tok = Tokenizer.from_words(SYNTHETIC_WORDS)
    assert tok.tokens[:5] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 5 + len(SYNTHETIC_WORDS) - 1  # "red" listed twice
    assert tok.tokenize("The red cubes, under a Big sphere. zebra") == [
        "the", "red", "cube", "##s", ",", "un", "##der", "a", "big", "sphere", ".", "[UNK]"]
    path = tmp_path / "vocab.txt"
    tok.save_vocab(path)
    hf = hf_bert(path)
    assert Tokenizer.from_vocab_file(path).tokens == tok.tokens
    for text in ["the red cube is left of a blue sphere .", "Big cubes, unders spheres", "zebra cube", ""]:
        assert tok.tokenize(text) == hf.tokenize(text)
        ref = hf(text, max_length=VOLTA_MAX_SEQ_LENGTH, truncation=True, padding="max_length")
        np.testing.assert_array_equal(tok.encode(text)[0], ref["input_ids"])
        np.testing.assert_array_equal(tok.encode(text)[1], ref["attention_mask"])


@pytest.mark.parametrize("word", ["Red", "café", "two words", ""])
def test_synthetic_vocab_rejects_unnormalised_words(word):
    with pytest.raises(ValueError, match="normalised"):
        Tokenizer.from_words(["a", word])


def test_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        Tokenizer.from_vocab_file(tmp_path / "nope.txt")
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[SEP\]', '\[MASK\]'\]"):
        Tokenizer.from_vocab_file(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.from_vocab_file(empty)


def test_vocab_file_keeps_line_ids(tmp_path):
    """Lines split on \\n only (a token may hold other Unicode breaks); CRLF files read the same."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a\x1cb", "c"]
    path = tmp_path / "vocab.txt"
    path.write_bytes("\r\n".join(tokens).encode("utf-8"))
    assert read_vocab_file(path) == tokens


def test_hf_tokenizer_json_is_the_same_vocabulary(tmp_path, real, minilm_vocab):
    """``data.vocab_file`` may be the model's HF ``tokenizer.json``: the same tokens and ids as its ``vocab.txt``;
    a tokenizer.json of another kind, or with gaps in its ids, is refused naming the file."""
    path = tmp_path / "tokenizer.json"
    with zipfile.ZipFile(minilm_zip()) as zf:
        path.write_bytes(zf.read("tokenizer.json"))
    from_json, from_txt = Tokenizer.from_vocab_file(path), real[0]
    assert from_json.vocab_size == from_txt.vocab_size and from_json.mask_id == from_txt.mask_id
    text = "a man rides a Horse, near two dogs!"
    assert from_json.encode(text, 16)[0].tolist() == from_txt.encode(text, 16)[0].tolist()
    bpe = tmp_path / "bpe.json"
    bpe.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="bpe.json: expected a WordPiece"):
        Tokenizer.from_vocab_file(bpe)
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "x": 2}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="gaps.json: model.vocab ids are not 0..1"):
        Tokenizer.from_vocab_file(gaps)


def test_dataset_without_words_names_the_config_key():
    """A prepared dataset with no word list of its own (real captions) needs ``data.vocab_file``: the error says so."""
    from types import SimpleNamespace

    from jaxvl.data.grain import tokenizer_for

    with pytest.raises(ValueError, match="set --config.data.vocab_file=PATH"):
        tokenizer_for(SimpleNamespace(metadata={}, full_name="jaxvl_volta_cc/default/1.0.0"))

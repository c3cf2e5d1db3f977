"""A pure-Python stand-in for coco-caption's tokenisation (Stanford PTBTokenizer 3.4.1 + punctuation removal).

coco-caption runs ``java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` over every caption
and then drops the tokens in :data:`PUNCTUATIONS`. :func:`ptb_tokenize` reproduces that for ordinary caption
text without Java, by these rules (applied in order):

1. Lower-case; newlines, tabs and other whitespace separate tokens; curly quotes become straight ones.
2. Brackets become PTB escapes: ``( ) [ ] { }`` -> ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``. They are *kept*: the
   tokenizer lower-cases its escapes, and coco-caption's list only removes the upper-case ``-LRB-`` etc.
3. ``"``, ``;`` and ``--`` separate tokens (PTB makes them the removed ``` `` ```/``''``, ``;``, ``--``); a comma
   or colon separates tokens unless it sits between two digits (``1,000`` and ``3:30`` stay).
4. Each word sheds, repeatedly: a leading backquote or ``$``, ``#`` before a digit, ``'`` or ``-`` before a
   non-digit (``'90s`` and ``-5`` stay); trailing ``'``, ``%`` and ``-``; a trailing run of ``?``/``!`` as one
   token (``?!`` and ``!!!`` survive the punctuation filter, a lone ``?`` does not); a run of periods
   (``...``); and a single trailing period, unless the word has an inner period (``u.s.``, ``a.m.``) or is an
   abbreviation in :data:`ABBREVIATIONS` (``mr.``, ``st.``). ``$``, ``#`` and ``%`` stay as tokens.
5. Contractions split as PTB does: ``n't 's 're 'll 've 'd 'm`` (``don't -> do n't``, ``can't -> ca n't``,
   ``cat's -> cat 's``), and ``cannot gonna gotta wanna gimme lemme`` -> ``can not``, ``gon na``, ...
6. Tokens in :data:`PUNCTUATIONS` are dropped; the rest are joined by single spaces.

Known differences from the Java tokenizer (rare in captions): sentence-final periods after abbreviations that
are not in the list, HTML entities (``&amp;``), emoticons, ``'n'``/``'tis``/``y'all`` style clitics, slashes
and other symbols inside words (``w/``), and decisions PTB takes from the original capitalisation.
"""

from __future__ import annotations

import re

PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])
# Words whose final period PTBTokenizer keeps whatever their case (checked against the 3.4.1 jar); it keeps more
# (``Ill.``, ``Mass.``) only when capitalised, which a lower-casing tokenizer cannot see.
ABBREVIATIONS = frozenset(
    "mr mrs ms messrs mme mlle dr prof st mt ave rd blvd bldg jr sr vs etc cf inc ltd co corp assn dept univ bros est "
    "gen gov lt col capt sgt adm brig cmdr hon pres supt rep reps sen sens ft "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri "
    "ala ariz calif colo conn fla ga ind kan ky md mich minn mo mont neb nev okla tenn va vt wis wyo".split()
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_BRACKET_TOKENS = frozenset(_BRACKETS.values())
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "gimme": ("gim", "me"), "lemme": ("lem", "me")}
_CLITICS = ("'s", "'re", "'ll", "'ve", "'d", "'m")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SEPARATORS = re.compile(r'"|;|--+|(?<!\d)[,:]|[,:](?!\d)')
_BRACKET_RE = re.compile(r"[()\[\]{}]")
_TRAILING = "'%-"


def _splits_leading(first: str, second: str) -> bool:
    """Whether PTB splits ``first`` off the front of a word: a backquote or ``$`` always, ``#`` before a digit
    (``#1``; ``#hashtag`` stays), an apostrophe or hyphen unless before a digit (``'90s``, ``-5`` stay)."""
    if first == "#":
        return second.isdigit()
    if first in "'-":
        return not second.isdigit()
    return first in "`$"


def _split_word(word: str) -> list[str]:
    """The PTB tokens of one whitespace-free chunk (rules 4 and 5 of the module docstring)."""
    head: list[str] = []
    tail: list[str] = []
    while word:
        if word in _CLITICS or word == "n't" or word in _BRACKET_TOKENS:
            break
        if len(word) > 1 and _splits_leading(word[0], word[1]):
            head.append(word[0])
            word = word[1:]
            continue
        if word[-1] in _TRAILING and len(word) > 1:
            tail.append(word[-1])
            word = word[:-1]
            continue
        if word[-1] in "?!" and len(word) > 1:
            run = len(word) - len(word.rstrip("?!"))
            if run < len(word):
                tail.append(word[-run:])
                word = word[:-run]
                continue
        if word.endswith("."):
            stem = word.rstrip(".")
            if not stem:  # only periods: "." or "..." (PTB also splits ".." into ". ."), all punctuation
                return head + tail[::-1]
            if len(word) - len(stem) > 1:
                tail.append("...")
                word = stem
                continue
            if "." not in stem and stem not in ABBREVIATIONS:
                tail.append(".")
                word = stem
                continue
        break
    middle: list[str] = []
    if word in _SPLIT_WORDS:
        middle.extend(_SPLIT_WORDS[word])
    elif word.endswith("n't") and len(word) > 3:
        middle.extend((word[:-3], "n't"))
    else:
        for clitic in _CLITICS:
            if word.endswith(clitic) and len(word) > len(clitic):
                middle.extend((word[: -len(clitic)], clitic))
                break
        else:
            if word:
                middle.append(word)
    return head + middle + tail[::-1]


def ptb_tokens(text: str) -> list[str]:
    """The tokens of one caption after lower-casing, PTB-like splitting and punctuation removal."""
    text = text.lower().translate(_QUOTES)
    text = _BRACKET_RE.sub(lambda m: f" {_BRACKETS[m.group()]} ", text)
    text = _SEPARATORS.sub(" ", text)
    tokens: list[str] = []
    for chunk in text.split():
        tokens.extend(t for t in _split_word(chunk) if t not in PUNCTUATIONS)
    return tokens


def ptb_tokenize(text: str) -> str:
    """``text`` tokenised as coco-caption scores it: lower-case tokens without punctuation, joined by spaces."""
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}")
    return " ".join(ptb_tokens(text))

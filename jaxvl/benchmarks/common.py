"""Pieces every ``jaxvl bench`` command shares."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any


def csv_choices(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type``: ``"a,b"`` -> ``["a", "b"]``, every item one of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(choices)}")
        return items

    return parse


def save_json(result: dict[str, Any], path: str | None) -> None:
    """Writes ``result`` as JSON to ``path`` (after every row, so a run cut short keeps what it measured)."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)

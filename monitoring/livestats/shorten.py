"""Compact one-line renderings of a request's inputs and outputs, for the dashboard's live feed."""

from __future__ import annotations

import json
from typing import Any

# Characters of a shortened input or output in the feed.
SHORT_CHARS = 96


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return shorten(value, 24)
    try:
        return f"{value:.4g}"
    except OverflowError:
        # An integer no double can hold (a client may send one; the schema
        # refuses it): its size says enough, and printing it could be slow.
        digits = int(value.bit_length() * 0.30103) + 1
        return f"{'-' if value < 0 else ''}<{digits}-digit integer>"


def _join(parts: list[str], limit: int) -> str:
    text = ""
    for i, part in enumerate(parts):
        piece = part if i == 0 else ", " + part
        if len(text) + len(piece) > limit:
            return text + ", …"
        text += piece
    return text


def shorten(value: Any, limit: int = SHORT_CHARS) -> str:
    """A compact one-line rendering of any JSON-like value, at most about ``limit`` characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shorten_row(row: Any, limit: int = SHORT_CHARS) -> str:
    if isinstance(row, list):
        return "[" + _join([_number(v) for v in row[:limit // 2]], limit) + "]"
    if isinstance(row, dict):
        return "{" + _join([f"{k}: {_number(v)}" for k, v in list(row.items())[:limit // 4]], limit) + "}"
    return shorten(row, limit)


def shorten_rows(inputs: Any, limit: int = SHORT_CHARS) -> str:
    """The first row of a request's inputs, and how many more there were."""
    if not isinstance(inputs, list) or not inputs:
        return shorten(inputs, limit)
    text = shorten_row(inputs[0], limit)
    if len(inputs) > 1:
        text += f" (+{len(inputs) - 1} more)"
    return text


def shorten_outputs(outputs: Any, limit: int = SHORT_CHARS) -> str:
    """The first output row: a label with its probability, or a value."""
    if not isinstance(outputs, list) or not outputs:
        return shorten(outputs, limit)
    first = outputs[0]
    if isinstance(first, dict) and "label" in first:
        probability = (first.get("probabilities") or {}).get(first["label"])
        text = str(first["label"]) + (f" ({probability:.2f})" if isinstance(probability, float) else "")
    elif isinstance(first, dict) and "value" in first:
        value = first["value"]
        text = _number(value) if not isinstance(value, list) else shorten_row(value, limit)
    else:
        text = shorten(first, limit)
    if len(outputs) > 1:
        text += f" (+{len(outputs) - 1} more)"
    return text if len(text) <= limit + 16 else text[:limit] + "…"

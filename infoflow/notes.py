"""A prompt's note for one model, and the check that it cites only layers and heads that model has.

A note is prose, so the check reads the two ways the gallery's notes cite the model: "layer 23"
(also "layers 23–24", "layer-23 heads") and head lists after the word "head(s)", as "L.H"
("heads 23.0, 23.1 and 23.7", "Heads, as measured here: 17.4 and 18.6"). A number followed by
"%" or "points" is a measurement, not a head.
"""
from __future__ import annotations

import re

_LAYER = re.compile(r"\blayers?[ \-](\d+)(?:\s*(?:–|—|-|to|and|,)\s*(\d+)\b)?", re.I)
_HEAD_LIST = re.compile(r"\bheads?\b[^0-9.]{0,80}?((?:\d+\.\d+)(?:\s*(?:,\s*and|,|and|–|—|-|to)\s*\d+\.\d+)*)(?!\s*(?:%|points?\b|\d))", re.I)
_HEAD = re.compile(r"(\d+)\.(\d+)")


def note_for(note: str | None, notes: dict[str, str], model_key: str) -> str | None:
    """The note shown with `model_key`: its own entry in `notes`, else the default `note`."""
    return notes.get(model_key, note)


def cited(note: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(layers, (layer, head) pairs) that a note names."""
    layers = [int(x) for m in _LAYER.finditer(note) for x in m.groups() if x is not None]
    heads = [(int(a), int(b)) for m in _HEAD_LIST.finditer(note) for a, b in _HEAD.findall(m.group(1))]
    return layers, heads


def note_problem(note: str | None, layers: int, heads: int | None) -> str | None:
    """What a note names that a model with `layers` layers and `heads` heads lacks, or None."""
    if not note:
        return None
    said, pairs = cited(note)
    for layer in said + [a for a, _ in pairs]:
        if layer >= layers:
            return f"names layer {layer}, but the model has {layers} layers (0–{layers - 1})"
    for layer, head in pairs:
        if heads and head >= heads:
            return f"names head {layer}.{head}, but the model has {heads} heads per layer (0–{heads - 1})"
    return None

"""The method page's worked example: numbers read from one gallery prompt's data at build time,
so the page quotes what the viewer shows for this build (issue 24, item 7)."""
from __future__ import annotations

import numpy as np

from .datafile import decode_array, variant

EXAMPLE_IDS = ("ioi-mary-john", "ioi")      # the gallery's IOI prompt (the tests' is "ioi")


def worked_example(entries: list[dict], docs: dict[str, dict]) -> dict | None:
    """{prompt, model, answer, ...} for the first of EXAMPLE_IDS built (else the first prompt),
    from the primary model's document. None when there is no prompt."""
    entry = next((e for i in EXAMPLE_IDS for e in entries if e["id"] == i and e["id"] in docs), None)
    entry = entry or next((e for e in entries if e["id"] in docs), None)
    if entry is None:
        return None
    return {"id": entry["id"], "title": entry["title"], "text": entry["text"], "page": entry["page"],
            **_numbers(docs[entry["id"]])}


def _numbers(doc: dict) -> dict:
    v = variant(doc, "words")
    norm = decode_array(v["norm"]).astype(np.float64)               # (L, 2, P, G)
    attr = decode_array(v["logit_attr"]).astype(np.float64)         # (P, k, G)
    groups = decode_array(v["groups"]).astype(np.int64)             # (P,)
    pred = decode_array(doc["predictions"]["ids"])
    probs = decode_array(doc["predictions"]["probs"])
    L, _, P, G = norm.shape
    last = norm[L - 1, 1, P - 1]                                    # after the last layer, at the last position
    whole = last.sum()
    first = [int(np.flatnonzero(groups == g)[0]) if (groups == g).any() else 0 for g in range(G)]
    sink = int(groups[0])
    a = attr[P - 1, 0].copy()
    a[sink] = -np.inf                                               # the sink's constant part is not an answer
    a[int(groups[P - 1])] = -np.inf                                 # nor the position's own token
    answer = int(np.argmax(a))
    label = lambda g: v["sources"][g]  # noqa: E731
    shown = whole - last[sink]
    return {
        "model": doc["model"].get("id", ""), "layers": L, "positions": P,
        "prediction": doc["strings"][int(pred[P - 1, 0])], "prob": float(probs[P - 1, 0]),
        "answer": label(answer), "answer_pos": first[answer], "answer_attr": float(attr[P - 1, 0, answer]),
        "answer_share": float(last[answer] / whole), "answer_share_shown": float(last[answer] / shown),
        "sink": label(sink), "sink_share": float(last[sink] / whole),
    }

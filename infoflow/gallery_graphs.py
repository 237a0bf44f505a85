"""The gallery's attribution graphs (issue 23, item 3): which targets each prompt gets on each
model, computed in the same pass as its decomposition, and the graph sidecar the build writes.

Each prompt, on each model, gets the graph of its declared target (against its contrast, if
declared; prompts.py), then the top TOP_PREDICTIONS predictions at the last position,
demeaned, and the ablation check (ablate.py) of the first graph. The sidecar document
(graphfile.graph_document) is cached in the prompt's result entry under "graph" and published
apart, as data/graph/<id>.<hash>.msgpack (docs/data-format.md, "Graph sidecar"), so the viewer
fetches it only when its Paths view opens.
"""
from __future__ import annotations

from pathlib import Path

import msgpack

from .datafile import DataFileError, content_hash
from .decompose import InputError

TOP_PREDICTIONS = 3


class TargetError(InputError):
    """A declared target or contrast is not one token on a model (the message is one line)."""


def graph_specs(p, lm, model: str | None) -> list:
    """The paths.TargetSpec list of prompt `p` on `model`: its declared target first (checked to
    be one token here, before any compute), then the top predictions at the last position."""
    from .gallery_models import model_slug
    from .paths import TargetSpec

    target, contrast = p.graph_target(model)
    specs = []
    if target is not None:
        ids = [_one_token(lm.tokenizer, text, what, p, model, model_slug(model))
               for what, text in (("target", target), ("contrast", contrast)) if text is not None]
        specs.append(TargetSpec(ids[0], ids[1] if len(ids) > 1 else None, -1))
    specs += [TargetSpec(None, None, -1, rank=r) for r in range(TOP_PREDICTIONS)]
    return specs


def _one_token(tokenizer, text: str, what: str, p, model, slug: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    raise TargetError(f"the declared {what} {text!r} is {len(ids)} tokens on {slug}, {pieces!r}; declare "
                      f"one token, for this model alone if need be: {what}s = {{ {slug} = \" ...\" }}")


def unique(graphs: list) -> list:
    """The graphs without repeats (a declared demeaned target that is also a top prediction)."""
    seen, out = set(), []
    for g in graphs:
        key = (g.target, g.contrast, g.position)
        if key not in seen:
            seen.add(key)
            out.append(g)
    return out


def graph_sidecar(d, lm, prompt_id: str) -> dict:
    """The sidecar document of a decomposition computed with graph_specs' graphs; runs the
    ablation check of the first graph in the real model."""
    from .ablate import ablation_check
    from .graphfile import graph_document

    graphs = unique(d.graphs)
    graphs[0].check = ablation_check(lm, graphs[0])
    return graph_document(graphs, prompt_id=prompt_id, model=d.model)


def check_cached(doc: dict) -> None:
    """A cached result must hold its graph sidecar, well formed (DataFileError otherwise)."""
    from .graphfile import check_graph_document

    if "graph" not in doc:
        raise DataFileError("no graph sidecar (an entry of an older build)")
    check_graph_document(doc["graph"])


def sidecar_bytes(doc: dict, main_name: str) -> bytes:
    """The published sidecar: the cached document, naming the data file it belongs to, so a
    reader can refuse a mismatched pair."""
    return msgpack.packb({**doc["graph"], "main": main_name}, use_bin_type=True)


def write_sidecar(data_dir: Path, prompt_id: str, doc: dict, main_name: str) -> tuple[str, int]:
    """data_dir/graph/<id>.<hash of its own bytes>.msgpack -> (its path relative to data_dir, size)."""
    body = sidecar_bytes(doc, main_name)
    name = f"graph/{prompt_id}.{content_hash(body)}.msgpack"
    (data_dir / "graph").mkdir(exist_ok=True)
    (data_dir / name).write_bytes(body)
    return name, len(body)

"""Which models a gallery uses, their names in URLs, and where two tokenizers disagree.

A gallery computes every prompt on each of its models. The first model is the primary one: its
pages and data files keep the URLs a one-model gallery has always had (p/<id>.html,
data/<id>.<hash>.msgpack); every other model's files live under data/<slug>/ and thumbs/<slug>/,
and its view of a prompt page is the same page with ?model=<slug>.
"""
from __future__ import annotations

import re
from pathlib import Path

from .model import DEFAULT_MODEL, GEMMA_MODEL, OFFLINE_MODELS

_RESERVED_SLUGS = {"heads", "models", "index", "static", "data", "thumbs", "p", "c", "licenses", "live"}


def model_slug(name: str | None) -> str:
    """The model's name in URLs and folder names: an offline model's own name, else a slug of
    the hub id or folder name."""
    name = name or DEFAULT_MODEL
    if name in OFFLINE_MODELS:
        return name
    base = Path(name.rstrip("/")).name or name
    slug = "-".join(re.findall(r"[A-Za-z0-9.]+", base))[:48].strip("-.") or "model"
    return f"model-{slug}" if slug.lower() in _RESERVED_SLUGS else slug


def offline_installed(name: str) -> bool:
    """Whether an offline model's package is installed (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec(OFFLINE_MODELS[name].package) is not None


def gallery_models(cfg, log=print) -> list[str]:
    """The gallery's models, primary first.

    --models, else --model (a one-model gallery, as before), else the prompts file's
    `models = [...]`, else $INFOFLOW_MODELS (comma-separated), else every offline model that is
    installed: the default model, and Gemma 3 270M where `bash setup.sh` installed it
    (else one line says how to add it).
    """
    import os

    from .prompts import load_models

    if cfg.models:
        return list(cfg.models)
    if cfg.model:
        return [cfg.model]
    named = load_models(cfg.prompts)
    if named:
        from .config import check_models
        check_models(named, f"{cfg.prompts}: models")
        return list(named)
    if os.environ.get("INFOFLOW_MODELS", "").strip():
        from .config import check_models
        named = tuple(m.strip() for m in os.environ["INFOFLOW_MODELS"].split(","))
        check_models(named, "$INFOFLOW_MODELS")
        return list(named)
    models = [DEFAULT_MODEL]
    if offline_installed(GEMMA_MODEL):
        models.append(GEMMA_MODEL)
    else:
        log(f"infoflow: the gallery shows {DEFAULT_MODEL} only; to compare it with Gemma 3 270M, "
            "run `bash setup.sh` (without --no-gemma) and build again.")
    return models


def has_chat_template(model: str, cache=None) -> bool | None:
    """Whether a model's tokenizer carries a chat template, read from its folder without loading
    it (the converted folder of an offline model, or a local folder); None when not known."""
    import json

    from .model import _is_converted, _offline_target

    if model in OFFLINE_MODELS:
        folder = _offline_target(model, cache)
        if not _is_converted(folder):
            return None
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
    else:
        return None
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return None


_LABELS = {DEFAULT_MODEL: "SmolLM2 135M", GEMMA_MODEL: "Gemma 3 270M"}


def model_label(info: dict) -> str:
    """A short name for buttons and cards: "SmolLM2 135M", "Gemma 3 270M", a folder's name."""
    name = str(info.get("id", "?"))
    return _LABELS.get(name) or Path(name.rstrip("/")).name or name


# ----------------------------------------------------------------------------- tokenizations


def char_starts(tokens: list[str], text: str) -> list[int | None] | None:
    """Where each token starts in `text` (None: a token outside it, such as <bos> or a chat
    template's), or None when the tokens' display strings do not spell the text."""
    joined = "".join(tokens)
    offset = joined.find(text)
    if offset < 0 or not text:
        return None
    starts, pos = [], 0
    for t in tokens:
        rel = pos - offset
        starts.append(rel if 0 <= rel < len(text) and t else None)
        pos += len(t)
    return starts


def _pieces(tokens, starts, lo, hi, text) -> list[str]:
    """The pieces of text[lo:hi] as the tokens cut it."""
    cuts = sorted({s for s in starts if s is not None and lo < s < hi})
    edges = [lo, *cuts, hi]
    return [text[a:b] for a, b in zip(edges, edges[1:])]


def tokenization_differences(tokens_a: list[str], tokens_b: list[str], text: str) -> dict | None:
    """How two tokenizers read the same prompt: token counts, tokens outside the text
    (special ones), and each word they cut differently with both sets of pieces. None when a
    model's tokens do not spell the text (e.g. byte pieces), so nothing can be compared."""
    sa, sb = char_starts(tokens_a, text), char_starts(tokens_b, text)
    if sa is None or sb is None:
        return None
    words = []
    for m in re.finditer(r"\S+", text):
        lo, hi = m.start(), m.end()
        # a word starts where its leading space's token starts, whichever way a model attaches it
        lo_cut = lo - 1 if lo and text[lo - 1] == " " else lo
        cut_a = {s for s in sa if s is not None and lo_cut <= s < hi} - {lo_cut, lo}
        cut_b = {s for s in sb if s is not None and lo_cut <= s < hi} - {lo_cut, lo}
        if cut_a != cut_b:
            words.append({"word": m.group(), "a": _pieces(tokens_a, sa, lo, hi, text),
                          "b": _pieces(tokens_b, sb, lo, hi, text)})
    extra = lambda toks, starts: [t for t, s in zip(toks, starts) if s is None and t]  # noqa: E731
    return {"same": not words, "n_a": len(tokens_a), "n_b": len(tokens_b),
            "extra_a": extra(tokens_a, sa), "extra_b": extra(tokens_b, sb), "words": words}

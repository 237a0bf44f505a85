"""The whole pipeline: prompts -> (cached) decompositions -> data files -> a static site.

The site is assembled in a staging folder and swapped in at the end (sitedir.py says how, and
what is guaranteed), so a build that fails or is killed leaves the previous site as it was.
Every cached result is written to a temporary name and renamed, so a killed build loses only
the prompt it was computing.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import ENGINE_VERSION, __version__
from .config import SiteConfig
from .datafile import (SCHEMA, DataFileError, content_hash, encode, heads_page_bytes, heads_path, pack_entry,
                       page_bytes, summarize, thumbnail_norms, unpack_entry)
from .files import atomic_write, read_regular
from .gallery_graphs import check_cached as check_cached_graph, write_sidecar
from .gallery_models import gallery_models, has_chat_template, model_label, model_slug, tokenization_differences
from .about import worked_example
from .licenses import write_licenses
from .notes import note_for, note_problem
from .model import cache_dir, fingerprint
from .prompts import Prompt, PromptError, load_prompts, span_groups
from .site import SITE_SRC, palette, render_site, thumbnail_png
from .sitedir import (check_replaceable, discard, locked, new_staging, read_marker, recover,
                      resolve_out, swap, write_marker)


@dataclass
class BuildSummary:
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # a chat prompt on a model without a template
    model_loaded: bool = False
    seconds: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{len(self.computed)} computed, {len(self.reused)} reused, {len(self.failed)} failed{skipped} "
                f"in {self.seconds:.1f} s; model {'loaded' if self.model_loaded else 'not loaded'}")


class BuildError(Exception):
    """The build stopped; the previous site is untouched."""


# ----------------------------------------------------------------------------- cache


CACHE_FORMAT = 4     # 2: entries are [key, document] (datafile.pack_entry); 1-entries are never read
                     # 3: the document holds the graph sidecar (gallery_graphs.py) under "graph"
                     # 4: and the last position's lens track and vocabulary-mean parts (issue 24)


def result_key(model_fingerprint: str, p: Prompt, cfg: SiteConfig) -> str:
    blob = json.dumps([f"{model_fingerprint}:{cfg.dtype}", p.text, p.chat, p.groups, ENGINE_VERSION, SCHEMA,
                       cfg.top_k, CACHE_FORMAT, p.target, p.contrast, p.targets, p.contrasts],
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_cached(path: Path, model_fingerprint: str | None = None) -> dict | None:
    """The cached document under `path` (its name is its key), or None, with a warning, when it
    is missing, truncated, corrupt, stored under another key or malformed, or (given
    `model_fingerprint`) was computed with other weights than the ones just fingerprinted."""
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.warn(f"cached result {path.name} is unreadable ({e}); recomputing it")
        return None
    try:
        doc = unpack_entry(raw, path.stem)
        check_cached_graph(doc)
    except DataFileError as e:
        warnings.warn(f"cached result {path.name} is unusable ({e}); recomputing it")
        return None
    made_with = doc["model"].get("fingerprint")
    if model_fingerprint is not None and made_with != model_fingerprint:
        warnings.warn(f"cached result {path.name} was computed with the weights {made_with}, not the "
                      f"model's weights now ({model_fingerprint}); recomputing it")
        return None
    return doc


def write_cached(path: Path, body: bytes) -> None:
    atomic_write(path, pack_entry(path.stem, body))


def _variants(p: Prompt) -> tuple[dict, dict]:
    variants = {"tokens": None, "words": "words"}
    labels = {"tokens": "none (each token)", "words": "by words"}
    return variants, labels


def compute(p: Prompt, lm, cfg: SiteConfig, model: str | None = None) -> bytes:
    from .decompose import InputError, decompose_variants, tokenize
    from .gallery_graphs import graph_sidecar, graph_specs
    from .tokens import display_tokens

    variants, labels = _variants(p)
    if p.groups:
        ids = tokenize(lm, p.text, chat=p.chat, max_tokens=cfg.max_tokens)
        groups = span_groups(display_tokens(lm.tokenizer, ids), p.text, p.groups)
        if groups is None:
            raise InputError(f"could not line up the declared groups {p.groups!r} with the tokens")
        variants["prompt"], labels["prompt"] = groups, "declared groups"
    specs = graph_specs(p, lm, model)           # refuses a multi-token target before computing
    declared = specs[0].target if specs and isinstance(specs[0].target, int) else None
    results = decompose_variants(p.text, lm, variants, top_k=cfg.top_k, chat=p.chat,
                                 max_tokens=cfg.max_tokens, graphs=specs, lens_target=declared)
    graph = graph_sidecar(next(iter(results.values())), lm, p.id)
    return encode(results, p.meta(), labels=labels, heads=True, extra={"graph": graph})


def select(prompts: list[Prompt], only: tuple[str, ...], shard: tuple[int, int] | None,
           where: Path) -> list[Prompt]:
    """The prompts this run computes: --only narrows them, then --shard takes its share."""
    unknown = sorted(set(only) - {p.id for p in prompts})
    if unknown:
        raise PromptError(f"--only: no prompt with id {unknown} in {where}.")
    selected = [p for p in prompts if not only or p.id in only]
    if shard:
        i, n = shard
        selected = [p for k, p in enumerate(selected) if k % n == i]
    return selected


# ----------------------------------------------------------------------------- build


def build(cfg: SiteConfig, *, only: tuple[str, ...] = (), keep_going: bool = False,
          shard: tuple[int, int] | None = None, cached_only: bool = False, progress: bool = True,
          log=print) -> BuildSummary:
    """Compute what the cache lacks, on each of the gallery's models, then replace cfg.out with
    the new site.

    shard=(i, n): compute share i of n of the prompts (on every model) into the cache and write
    no site. cached_only: assemble from the cache alone (merge), computing nothing.
    Every failure is a PromptError, BuildError, ModelError, ConfigError or SiteDirError whose
    message says what to do; the previous site is untouched by all of them.
    """
    t0 = time.perf_counter()
    prompts = load_prompts(cfg.prompts)            # PromptError: nothing touched yet
    selected = select(prompts, only, shard, cfg.prompts)
    models = gallery_models(cfg, log)
    summary = BuildSummary()
    try:
        if shard:
            for model in models:
                _compute_all(cfg, model, models, selected, keep_going, cached_only, progress, summary)
            _refuse_missing(cached_only, summary)
        else:
            out = resolve_out(cfg.out)
            check_replaceable(out)                 # refuse before computing anything
            with locked(out, log):
                docs = {}                          # model -> {prompt id: document}
                for model in models:
                    docs[model] = _compute_all(cfg, model, models, selected, keep_going, cached_only,
                                               progress, summary)
                    model_fp = fingerprint(model, cfg.cache)
                    if only and model_fp:          # the other prompts come from the cache
                        for p in prompts:
                            if p.id not in docs[model] and (doc := read_cached(_entry_path(cfg, p, model_fp), model_fp)):
                                docs[model][p.id] = doc
                _refuse_missing(cached_only, summary)
                recover(out)
                check_replaceable(out)
                have = [p for p in prompts if any(p.id in d for d in docs.values())]
                _check_notes(cfg, models, have, docs)
                _write_site(cfg, out, models, have, docs, summary)
    except OSError as e:
        raise BuildError(f"could not write {_where(e, cfg)}: {_reason(e)}. The previous site is untouched; "
                         "free some space or fix the folder's permissions, then build again.") from e
    summary.seconds = time.perf_counter() - t0
    return summary


def _where(e: OSError, cfg: SiteConfig) -> str:
    """The file or folder an OSError is about (atomic_write names the file it could not write)."""
    return str(e.filename) if e.filename else f"{cfg.out} (or the cache, {cache_dir(cfg.cache)})"


def _reason(e: OSError, limit: int = 160) -> str:
    """One short line: the system's words for it, never a whole chained message."""
    text = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def _check_notes(cfg: SiteConfig, models: list[str], prompts: list[Prompt], docs: dict[str, dict[str, dict]]) -> None:
    """Refuse a note that names a layer or head the model it is shown with does not have."""
    for p in prompts:
        for model in models:
            doc = docs[model].get(p.id)
            if doc is None:
                continue
            key = model_slug(model)
            info = doc["model"]
            problem = note_problem(note_for(p.note, p.notes, key), int(info.get("layers") or doc["layers"]),
                                   info.get("heads"))
            if problem:
                where = f"{cfg.prompts}, prompt {p.id!r}" + (f" (line {p.line})" if p.line else "")
                own = "its `notes` entry" if key in p.notes else "its note"
                raise BuildError(f"{where} on {key}: {own} {problem}; write that model's own note as "
                                 f'notes = {{ {key} = "..." }} beside `note`.')


def _missing_models(p: Prompt, models: list[str], docs: dict[str, dict[str, dict]], summary: BuildSummary) -> list[dict]:
    """The gallery's models this prompt was not built on, each with why (a ?model= link says so)."""
    out = []
    for model in models:
        if p.id in docs[model]:
            continue
        key = model_slug(model)
        why = next((msg for name, msg in summary.skipped + summary.failed if name in (p.id, f"{p.id} ({key})")), "")
        out.append({"key": key, "why": why.split(": ", 1)[-1] if why else f"{key} has no result for this prompt"})
    return out


def _refuse_missing(cached_only: bool, summary: BuildSummary) -> None:
    if cached_only and summary.failed:
        raise BuildError("cannot assemble the site; missing results: "
                         + ", ".join(pid for pid, _ in summary.failed))


def _entry_path(cfg: SiteConfig, p: Prompt, model_fingerprint: str) -> Path:
    return cache_dir(cfg.cache) / "results" / f"{result_key(model_fingerprint, p, cfg)}.msgpack"


def _compute_all(cfg: SiteConfig, model: str, models: list[str], selected: list[Prompt], keep_going: bool,
                 cached_only: bool, progress: bool, summary: BuildSummary) -> dict[str, dict]:
    """{prompt id: document} for `selected` on `model`, from the cache or computed into it.
    The summary names a prompt by its id on the primary model, as "id (model)" on the others."""
    from .decompose import InputError, get_model
    from .gallery_graphs import TargetError

    docs, lm = {}, None
    name = (lambda pid: pid) if model == models[0] else (lambda pid: f"{pid} ({model_slug(model)})")
    # A hub model that is not downloaded has no fingerprint until it is loaded.
    model_fp = fingerprint(model, cfg.cache)
    chat = has_chat_template(model, cfg.cache) if len(models) > 1 else None
    bar = _progress(selected, progress)
    for p in bar:
        if p.chat and chat is False:           # a base model: its page shows the other models
            summary.skipped.append((name(p.id), f"{name(p.id)}: {model_slug(model)} has no chat template, "
                                    "so this chat prompt is shown on the other models only"))
            continue
        doc = read_cached(_entry_path(cfg, p, model_fp), model_fp) if model_fp else None
        if doc is None and cached_only:
            summary.failed.append((name(p.id), f"{name(p.id)}: no cached result (was its shard built and merged?)"))
            continue
        if doc is not None:
            summary.reused.append(name(p.id))
            docs[p.id] = doc
            continue
        try:
            if lm is None:
                bar.set_description(f"loading {model_slug(model)}")
                lm = get_model(model, dtype=cfg.dtype, device=cfg.device, cache=cfg.cache)
                if model_fp is not None and lm.info["fingerprint"] != model_fp and docs:
                    raise BuildError(f"the weights of {model_slug(model)} changed during the build "
                                     f"({model_fp}, then {lm.info['fingerprint']}); build again.")
                summary.model_loaded, model_fp = True, lm.info["fingerprint"]
            bar.set_description(name(p.id))
            body = compute(p, lm, cfg, model)
        except (InputError, ValueError, RuntimeError) as e:
            where = f"{cfg.prompts}, prompt {p.id!r}" + (f" (line {p.line})" if p.line else "")
            if len(models) > 1:
                where += f" on {model_slug(model)}"
            summary.failed.append((name(p.id), f"{where}: {e}"))
            if not keep_going:
                advice = "" if isinstance(e, TargetError) else (
                    "\nFix or remove that prompt, or pass --keep-going to build the others. "
                    "The previous site is untouched.")
                raise BuildError(f"{where}: {e}{advice}") from e
            continue
        path = _entry_path(cfg, p, model_fp)
        write_cached(path, body)
        docs[p.id] = unpack_entry(read_regular(path), path.stem)
        summary.computed.append(name(p.id))
    return docs


def merge_shards(shard_caches: list[Path], cfg: SiteConfig, **kwargs) -> BuildSummary:
    """Copy the results of shard builds into this cache, then assemble the site from it alone."""
    results = cache_dir(cfg.cache) / "results"
    results.mkdir(parents=True, exist_ok=True)
    for shard in shard_caches:
        folder = Path(shard) / "results" if (Path(shard) / "results").is_dir() else Path(shard)
        for f in folder.glob("*.msgpack"):
            if read_cached(f) is not None:
                atomic_write(results / f.name, read_regular(f))
    return build(cfg, cached_only=True, **kwargs)


def _progress(items, enabled: bool):
    from tqdm import tqdm
    return tqdm(items, unit="prompt", disable=not enabled, dynamic_ncols=True)


def _write_site(cfg: SiteConfig, out: Path, models: list[str], prompts: list[Prompt],
                docs: dict[str, dict[str, dict]], summary: BuildSummary) -> None:
    """Write the site into a staging folder, then swap it in place of `out`."""
    staging = new_staging(out)
    try:
        (staging / "data").mkdir()
        (staging / "thumbs").mkdir()
        colours = palette()
        entries, infos, built = [], {}, []
        for p in prompts:
            views = []
            for model in models:
                if p.id not in docs[model]:
                    continue
                doc = docs[model][p.id]
                view, when = _write_prompt_files(staging, p, doc, model_slug(model), model == models[0],
                                                 colours, summary)
                view["note"] = note_for(p.note, p.notes, model_slug(model))
                built.append(when)
                views.append(view)
                infos.setdefault(model, {**doc["model"], "key": model_slug(model), "label": model_label(doc["model"])})
            entry = {**p.meta(), **views[0], "page": f"p/{p.id}.html", "models": views,
                     "missing": _missing_models(p, models, docs, summary)}
            if len(views) > 1:
                entry["compare"] = f"c/{p.id}.html"
                entry["tokenization"] = _tokenization_notes(p, [docs[m][p.id] for m in models if p.id in docs[m]], views)
            entries.append(entry)
        site_models = [infos[m] for m in models if m in infos]
        write_licenses(staging, site_models)   # model["terms"]: the copy in the site
        site = {"title": "infoflow gallery", "version": __version__,
                "built": max(built) if built else "", "models": site_models,
                "model": site_models[0] if site_models else {}}
        manifest = {"schema": SCHEMA, "site": site, "prompts": entries}
        (staging / "data" / "manifest.json").write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        if cfg.live:
            from .live import export_live_model
            site["live"] = export_live_model(staging, site, model=cfg.model or models[0], cache=cfg.cache)
        render_site(staging, entries, site, example=worked_example(entries, docs[models[0]]) if models else None)
        write_marker(staging, site_identity(cfg))
    except BaseException:
        discard(staging, out)
        raise
    swap(staging, out)


def _write_prompt_files(staging: Path, p: Prompt, doc: dict, key: str, primary: bool, colours,
                        summary: BuildSummary) -> tuple[dict, str]:
    """One model's data file, heads file and thumbnail of a prompt: the primary model's at
    data/<id>.<hash>.msgpack as always, another's under data/<key>/.
    -> (what the index and the page need of it, when it was computed)"""
    slug = None if primary else key
    body, when = page_bytes(doc, {**p.meta(), "note": note_for(p.note, p.notes, key)})
    data_dir, thumb_dir = staging / "data", staging / "thumbs"
    if slug:
        data_dir, thumb_dir = data_dir / slug, thumb_dir / slug
        data_dir.mkdir(exist_ok=True)
        thumb_dir.mkdir(exist_ok=True)
    name = f"{p.id}.{content_hash(body)}.msgpack"
    (data_dir / name).write_bytes(body)
    summary.sizes[p.id if not slug else f"{p.id} ({slug})"] = len(body)
    heads = heads_page_bytes(doc, name)                  # fetched only when a head view opens
    if heads is not None:
        heads_path(data_dir / name).parent.mkdir(exist_ok=True)
        heads_path(data_dir / name).write_bytes(heads)
    graph, graph_size = write_sidecar(data_dir, p.id, doc, name)   # fetched when the Paths view opens
    summary.sizes[f"{p.id} graph" if not slug else f"{p.id} graph ({slug})"] = graph_size
    png = thumbnail_png(thumbnail_norms(doc), colours)
    thumb = f"{p.id}.{content_hash(png)}.png"
    (thumb_dir / thumb).write_bytes(png)
    rel = lambda folder, f: f"{folder}/{slug}/{f}" if slug else f"{folder}/{f}"  # noqa: E731
    return {**summarize(doc), "key": key, "label": model_label(doc["model"]),
            "layers": doc["layers"],
            "data": rel("data", name), "thumb": rel("thumbs", thumb),
            "heads": heads_path(rel("data", name)).as_posix() if heads is not None else "",
            "graph": rel("data", graph)}, when


def _tokenization_notes(p: Prompt, model_docs: list[dict], views: list[dict]) -> list[dict]:
    """Where each other model tokenizes the prompt differently from the first one."""
    notes = []
    base = model_docs[0]
    for doc, view in zip(model_docs[1:], views[1:]):
        diff = tokenization_differences(base["tokens"], doc["tokens"], p.text)
        notes.append({"a": views[0]["key"], "b": view["key"], "a_label": model_label(base["model"]),
                      "b_label": model_label(doc["model"]), "n_a": base["positions"], "n_b": doc["positions"],
                      "diff": diff})
    return notes


# ----------------------------------------------------------------------------- staleness


def site_identity(cfg: SiteConfig) -> dict:
    """The config a site was built with, and a digest of everything its bytes depend on."""
    return {**cfg.identity(), "inputs": inputs_digest(cfg)}


def inputs_digest(cfg: SiteConfig) -> str | None:
    """sha256 over the prompts file, the models, the engine and the site sources: equal digests
    make equal sites. None when a model's fingerprint is not known without loading it."""
    try:
        models = gallery_models(cfg, log=lambda *a: None)
    except ValueError:                       # a bad `models` in the prompts file: build says so
        return None
    fps = [fingerprint(m, cfg.cache, convert=False) for m in models]
    if None in fps:
        return None
    fp = fps[0] if len(fps) == 1 else fps
    h = hashlib.sha256(json.dumps([fp, cfg.identity(), ENGINE_VERSION, SCHEMA, __version__]).encode())
    try:
        h.update(Path(cfg.prompts).read_bytes())
    except OSError:
        return None
    for path in sorted(SITE_SRC.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(SITE_SRC).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def stale_reason(cfg: SiteConfig) -> str | None:
    """Why cfg.out would be rebuilt (None: it is the site these inputs make). Reads only."""
    marker = read_marker(resolve_out(cfg.out))
    if marker is None:
        return f"{cfg.out} holds no site built by infoflow"
    built_with = marker.get("config", {})
    digest = inputs_digest(cfg)
    if digest is None:
        return "the model is not converted or downloaded yet"
    if built_with.get("inputs") != digest:
        changed = [k for k, v in cfg.identity().items() if built_with.get(k) != v]
        return ("it was built with other options: " + ", ".join(f"{k}={built_with.get(k)!r}" for k in changed)
                if changed else "the prompts file, the model or the site sources changed since it was built")
    return None

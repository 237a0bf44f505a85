"""The whole pipeline: prompts -> (cached) decompositions -> data files -> a static site.

The site is assembled in a staging folder and swapped in at the end, so a build that fails
or is killed leaves the previous site as it was. Every cached result is written to a
temporary name and renamed, so a killed build loses only the prompt it was computing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from . import ENGINE_VERSION, __version__
from .datafile import SCHEMA, DataFileError, content_hash, decode_array, encode
from .files import atomic_write
from .decompose import DEFAULT_MAX_TOKENS, InputError, decompose_variants, get_model
from .model import DEFAULT_MODEL, _folder_fingerprint, cache_dir, converted_default_model
from .prompts import Prompt, PromptError, load_prompts, span_groups
from .site import palette, render_site, thumbnail_png


@dataclass
class BuildOptions:
    prompts: Path = Path("prompts/gallery.toml")
    out: Path = Path("build")
    model: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    cache: str | None = None
    only: tuple[str, ...] = ()
    keep_going: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS
    top_k: int = 5
    progress: bool = True
    shard: tuple[int, int] | None = None    # (i, n): compute prompts i, i+n, ... into the cache only
    cached_only: bool = False               # merge: assemble from the cache, compute nothing
    live: bool = True                       # export the model for the in-browser page (live/)


@dataclass
class BuildSummary:
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    model_loaded: bool = False
    seconds: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{len(self.computed)} computed, {len(self.reused)} reused, {len(self.failed)} failed "
                f"in {self.seconds:.1f} s; model {'loaded' if self.model_loaded else 'not loaded'}")


class BuildError(Exception):
    """The build stopped; the previous site is untouched."""


# ----------------------------------------------------------------------------- helpers


def model_fingerprint(opts: BuildOptions) -> str:
    """Identify the weights without loading the model (hub ids: by name and dtype)."""
    if opts.model in (None, DEFAULT_MODEL):
        fp = _folder_fingerprint(converted_default_model(opts.cache))
    elif Path(opts.model).expanduser().is_dir():
        fp = _folder_fingerprint(Path(opts.model).expanduser())
    else:
        fp = f"hub:{opts.model}"
    return f"{fp}:{opts.dtype}"


def result_key(fingerprint: str, p: Prompt, opts: BuildOptions) -> str:
    blob = json.dumps([fingerprint, p.text, p.chat, p.groups, ENGINE_VERSION, SCHEMA, opts.top_k],
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_cached(path: Path) -> dict | None:
    """A cached result, or None (with a warning) when it is missing, truncated or corrupt."""
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        body, digest = raw[:-32], raw[-32:]
        if hashlib.sha256(body).digest() != digest:
            raise DataFileError("checksum mismatch (truncated or corrupt)")
        doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
        if doc.get("schema") != SCHEMA:
            raise DataFileError(f"schema {doc.get('schema')!r}")
        return doc
    except (OSError, ValueError, msgpack.UnpackException) as e:
        warnings.warn(f"cached result {path.name} is unusable ({e}); recomputing it")
        return None


def write_cached(path: Path, body: bytes) -> None:
    atomic_write(path, body + hashlib.sha256(body).digest())


def _variants(p: Prompt) -> tuple[dict, dict]:
    variants = {"tokens": None, "words": "words"}
    labels = {"tokens": "none (each token)", "words": "by words"}
    return variants, labels


def compute(p: Prompt, lm, opts: BuildOptions) -> bytes:
    variants, labels = _variants(p)
    if p.groups:
        from .decompose import tokenize
        from .tokens import display_tokens
        ids = tokenize(lm, p.text, chat=p.chat, max_tokens=opts.max_tokens)
        tokens = display_tokens(lm.tokenizer, ids)
        groups = span_groups(tokens, p.text, p.groups)
        if groups is None:
            raise InputError(f"could not line up the declared groups {p.groups!r} with the tokens")
        variants["prompt"], labels["prompt"] = groups, "declared groups"
    results = decompose_variants(p.text, lm, variants, top_k=opts.top_k, chat=p.chat,
                                 max_tokens=opts.max_tokens)
    return encode(results, p.meta(), labels=labels)


# ----------------------------------------------------------------------------- build


def build(opts: BuildOptions, log=print) -> BuildSummary:
    t0 = time.perf_counter()
    summary = BuildSummary()
    prompts = load_prompts(opts.prompts)            # PromptError: nothing touched yet
    if opts.only:
        unknown = set(opts.only) - {p.id for p in prompts}
        if unknown:
            raise PromptError(f"--only: no prompt with id {sorted(unknown)} in {opts.prompts}.")
    selected = [p for p in prompts if not opts.only or p.id in opts.only]
    if opts.shard:
        i, n = opts.shard
        selected = [p for k, p in enumerate(prompts) if k % n == i]

    cache = cache_dir(opts.cache) / "results"
    fingerprint = model_fingerprint(opts)
    docs: dict[str, dict] = {}
    lm = None

    bar = _progress(selected, opts.progress)
    for p in bar:
        path = cache / f"{result_key(fingerprint, p, opts)}.msgpack"
        doc = read_cached(path)
        if doc is None and opts.cached_only:
            summary.failed.append((p.id, f"{p.id}: no cached result (was its shard built and merged?)"))
            continue
        if doc is None:
            try:
                if lm is None:
                    bar.set_description("loading model")
                    lm = get_model(opts.model, dtype=opts.dtype, device=opts.device, cache=opts.cache)
                    summary.model_loaded = True
                bar.set_description(p.id)
                body = compute(p, lm, opts)
            except (InputError, ValueError, RuntimeError) as e:
                where = f"{opts.prompts}, prompt {p.id!r}" + (f" (line {p.line})" if p.line else "")
                summary.failed.append((p.id, f"{where}: {e}"))
                if not opts.keep_going:
                    raise BuildError(f"{where}: {e}\nFix or remove that prompt, or pass --keep-going "
                                     "to build the others. The previous site is untouched.") from e
                continue
            write_cached(path, body)
            doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
            summary.computed.append(p.id)
        else:
            summary.reused.append(p.id)
        docs[p.id] = doc

    # With --only, the other prompts come from the cache when they are there.
    for p in prompts:
        if p.id not in docs and opts.only:
            doc = read_cached(cache / f"{result_key(fingerprint, p, opts)}.msgpack")
            if doc is not None:
                docs[p.id] = doc

    if opts.cached_only and summary.failed:
        raise BuildError("cannot assemble the site; missing results: "
                         + ", ".join(pid for pid, _ in summary.failed))
    if not opts.shard:
        assemble(opts.out, [p for p in prompts if p.id in docs], docs, summary, opts=opts)
    summary.seconds = time.perf_counter() - t0
    return summary


def merge_shards(shard_caches: list[Path], opts: BuildOptions) -> BuildSummary:
    """Copy the results of shard builds into this cache, then assemble the site from it alone."""
    results = cache_dir(opts.cache) / "results"
    results.mkdir(parents=True, exist_ok=True)
    for shard in shard_caches:
        folder = Path(shard) / "results" if (Path(shard) / "results").is_dir() else Path(shard)
        for f in folder.glob("*.msgpack"):
            if read_cached(f) is not None:
                atomic_write(results / f.name, f.read_bytes())
    opts.cached_only = True
    return build(opts)


def _progress(items, enabled: bool):
    from tqdm import tqdm
    return tqdm(items, unit="prompt", disable=not enabled, dynamic_ncols=True)


def assemble(out: Path, prompts: list[Prompt], docs: dict[str, dict], summary: BuildSummary,
             opts: BuildOptions | None = None) -> None:
    """Write the site into a staging folder, then swap it in place of `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        (staging / "data").mkdir()
        (staging / "thumbs").mkdir()
        colours = palette()
        entries, models, built = [], {}, []
        for p in prompts:
            doc = dict(docs[p.id])
            doc["prompt"] = p.meta()      # titles, tags and notes change without recomputing
            # The compute time stays in the cache: data files depend only on their inputs, so
            # sharded and single builds, and repeated publishes, give identical bytes.
            built.append(doc.pop("built", ""))
            body = msgpack.packb(doc, use_bin_type=True)
            name = f"{p.id}.{content_hash(body)}.msgpack"
            (staging / "data" / name).write_bytes(body)
            summary.sizes[p.id] = len(body)
            words = next(v for v in doc["variants"] if v["name"] == "words")
            if "same_as" in words:
                words = next(v for v in doc["variants"] if v["name"] == words["same_as"])
            png = thumbnail_png(decode_array(words["norm"]), colours)
            thumb = f"{p.id}.{content_hash(png)}.png"
            (staging / "thumbs" / thumb).write_bytes(png)
            pred = decode_array(doc["predictions"]["ids"])
            probs = decode_array(doc["predictions"]["probs"])
            entries.append({
                **p.meta(), "n_tokens": doc["positions"],
                "top_prediction": doc["strings"][int(pred[-1, 0])], "top_prob": float(probs[-1, 0]),
                "worst_recon_error": doc["worst_recon_error"],
                "page": f"p/{p.id}.html", "data": f"data/{name}", "thumb": f"thumbs/{thumb}",
                "model": doc["model"]["id"]})
            models[doc["model"]["fingerprint"]] = doc["model"]
        site = {"title": "infoflow gallery", "version": __version__,
                "built": max(built) if built else "", "models": list(models.values()),
                "model": next(iter(models.values()), {})}
        manifest = {"schema": SCHEMA, "site": site, "prompts": entries}
        (staging / "data" / "manifest.json").write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        if opts is not None and opts.live:
            from .live import export_live_model
            site["live"] = export_live_model(staging, site, model=opts.model, cache=opts.cache)
        render_site(staging, entries, site)
        _swap(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _old(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def _recover(out: Path) -> None:
    """Finish a swap that a crash interrupted between its two renames."""
    old = _old(out)
    if old.exists():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    old = _old(out)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)

"""Step 4 of the pipeline: Decomposition <-> msgpack data file (docs/data-format.md)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import zlib
from pathlib import Path

import msgpack
import numpy as np

from . import ENGINE_VERSION, __version__
from .result import Decomposition, Heads

SCHEMA = 1
DTYPES = {"u8": "<u1", "i8": "<i1", "u16": "<u2", "u32": "<u4", "f16": "<f2", "f32": "<f4"}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class DataFileError(ValueError):
    """A data file is missing, corrupt or of an unknown schema."""


# ----------------------------------------------------------------------------- arrays


def encode_array(a: np.ndarray, dtype: str, *, deflate: bool = True) -> dict:
    data = np.ascontiguousarray(a, dtype=DTYPES[dtype]).tobytes()
    out = {"dtype": dtype, "shape": list(a.shape), "data": data}
    if deflate and len(data) > 256:
        out["data"], out["codec"] = zlib.compress(data, 6), "deflate"
    return out


def tril_mask(P: int, G: int, row_len: list[int], tail: int) -> np.ndarray:
    """Which (position, source) entries a "tril" array stores: row p keeps sources
    0 .. row_len[p]-1 and the last `tail` sources.   -> (P, G) bool"""
    keep = np.zeros((P, G), dtype=bool)
    for p, n in enumerate(row_len):
        keep[p, :n] = True
        if tail:
            keep[p, G - tail:] = True
    return keep


def encode_tril(a: np.ndarray, row_len: list[int], tail: int, *, signed: bool) -> dict:
    """(..., P, G) -> ragged rows, quantized per row to u8 (norms) or i8 (signed shares)."""
    keep = tril_mask(*a.shape[-2:], row_len, tail)
    scale = np.abs(a).max(-1)                                   # (..., P)
    q = 127 if signed else 255
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    quant = np.rint(a / safe * q)
    packed = quant[..., keep]                                    # (..., Σ row sizes)
    out = encode_array(packed, "i8" if signed else "u8")
    out.update(shape=list(a.shape), layout="tril", row_len=list(row_len), tail=tail, q=q,
               scale=encode_array(scale.astype(np.float32), "f32"))
    return out


# What a data file may declare: the viewer's LIMITS (site_src/static/js/arrays.js), far above any
# real result (the default model has 30 layers, a long prompt 512 positions). Every declared size
# is checked against these before anything is allocated or inflated.
LIMITS = {"layers": 1024, "positions": 16384, "top_k": 1024, "strings": 1 << 21,
          "elements": 1 << 27,     # one dense array: 128 Mi values (512 MB as float32)
          "total": 1 << 28,        # all of a document's dense arrays together
          "variants": 64}
MAX_FILE_BYTES = 1 << 30           # the viewer's MAX_FILE_BYTES
_SIZES = {name: np.dtype(t).itemsize for name, t in DTYPES.items()}


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 1 << 53


def check_array(obj, what: str = "array") -> tuple[int, int]:
    """An array map's declared shape, type and layout, checked against LIMITS before any
    allocation, as the viewer's checkArray.   -> (dense elements, stored bytes)"""
    if not (isinstance(obj, dict) and isinstance(obj.get("data"), bytes) and isinstance(obj.get("shape"), list)):
        raise DataFileError(f"`{what}` is not an array")
    shape = obj["shape"]
    if len(shape) > 6 or not all(_is_count(d) for d in shape):
        raise DataFileError(f"`{what}` has a malformed shape")
    total = 1
    for d in shape:
        total *= d
        if total > LIMITS["elements"]:
            raise DataFileError(f"`{what}` declares shape {shape}, more than infoflow reads "
                                f"({LIMITS['elements']} values at most); nothing was allocated")
    if obj.get("dtype") not in DTYPES:
        raise DataFileError(f"`{what}` has unknown type {obj.get('dtype')!r}")
    if obj.get("codec") not in (None, "deflate"):
        raise DataFileError(f"`{what}` has unknown codec {obj.get('codec')!r}")
    stored = total
    if obj.get("layout") == "tril":
        if len(shape) < 2:
            raise DataFileError(f"`{what}` is tril with fewer than two axes")
        P, G = shape[-2:]
        rows, tail = obj.get("row_len"), obj.get("tail", 0)
        if not (isinstance(rows, list) and len(rows) == P and all(_is_count(r) for r in rows)
                and tail in (0, 1) and not isinstance(tail, bool) and tail <= G):
            raise DataFileError(f"`{what}` has a bad row_len or tail")
        per = sum(min(r, G - tail) + tail for r in rows)
        stored = per * (total // (P * G)) if P * G else 0
    elif obj.get("layout") is not None:
        raise DataFileError(f"`{what}` has unknown layout {obj.get('layout')!r}")
    if "q" in obj:
        q = obj["q"]
        if not (isinstance(q, (int, float)) and not isinstance(q, bool) and np.isfinite(q) and q > 0):
            raise DataFileError(f"`{what}` has a bad quantization q={q!r}")
    return total, stored * _SIZES[obj["dtype"]]


def _inflate_capped(data: bytes, size: int, what: str) -> bytes:
    """Inflate a zlib stream into at most `size` bytes: a deflate bomb stops one byte past its
    declared size, having cost that much memory and no more."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, size + 1)
    except zlib.error as e:
        raise DataFileError(f"`{what}` does not inflate ({e})") from None
    if len(out) > size or inflater.unconsumed_tail:
        raise DataFileError(f"`{what}` inflates to more than its declared {size} bytes")
    if not inflater.eof:
        raise DataFileError(f"`{what}` is cut short: it inflates to {len(out)} bytes, its shape needs {size}")
    return out


def decode_array(obj: dict, what: str = "array") -> np.ndarray:
    """One array map -> the dense array, every size checked before it is allocated."""
    total, size = check_array(obj, what)
    raw = _inflate_capped(obj["data"], size, what) if obj.get("codec") == "deflate" else obj["data"]
    if len(raw) != size:
        raise DataFileError(f"`{what}` holds {len(raw)} bytes, its shape needs {size}")
    flat = np.frombuffer(raw, dtype=DTYPES[obj["dtype"]])
    shape = tuple(obj["shape"])
    if obj.get("layout") == "tril":
        keep = tril_mask(*shape[-2:], obj["row_len"], obj["tail"])
        out = np.zeros(shape, dtype=np.float32)
        out[..., keep] = flat.reshape(*shape[:-2], -1)
    else:
        out = flat.reshape(shape).astype(np.float32 if obj["dtype"] == "f16" else flat.dtype)
    if "q" in obj:
        scale = decode_array(obj.get("scale"), f"{what}.scale")
        if scale.shape != shape[:-1]:
            raise DataFileError(f"`{what}.scale` has shape {list(scale.shape)}, expected {list(shape[:-1])}")
        out = out.astype(np.float32) / obj["q"] * scale[..., None]
    return out


# ----------------------------------------------------------------------------- write


def row_lengths(groups: np.ndarray) -> list[int]:
    """Sources present at each position: groups are numbered by first use, so 0..max so far."""
    return [int(n) for n in np.maximum.accumulate(groups) + 1]


def encode(variants: dict[str, Decomposition], prompt: dict, *, labels: dict[str, str] | None = None,
           built: str | None = None, heads: bool = False, any_first: bool = False,
           extra: dict | None = None) -> bytes:
    """Serialize the variants of one prompt (the first must be the plain `tokens` one, except
    with any_first: a notebook's view of one grouped result, which infoflow.load never reads).
    extra: more top-level fields (the build's cached sidecars: "graph")."""
    labels = labels or {}
    base = next(iter(variants.values()))
    assert any_first or base.grouping == "tokens", "the first variant must be the ungrouped one"
    L, P, k = base.n_layers, base.n_tokens, base.pred_ids.shape[1]

    ids = sorted(base.token_text)
    assert base.lens_track_ids is None or set(base.lens_track_ids.tolist()) <= set(ids)
    index = {i: n for n, i in enumerate(ids)}
    idx_dtype = "u16" if len(ids) < 1 << 16 else "u32"
    to_index = np.vectorize(index.__getitem__, otypes=[np.int64])

    def metric(d, name, signed):
        arr = np.stack([getattr(d, f"attn_{name}"), getattr(d, f"mlp_{name}")], axis=1)  # (L,2,P,G)
        return encode_tril(arr, row_lengths(d.groups), int(d.has_bias), signed=signed)

    out_variants, seen = [], {}
    for name, d in variants.items():
        key = tuple(d.groups.tolist())
        entry = {"name": name, "label": labels.get(name, name), "grouping": d.grouping}
        if key in seen:
            entry["same_as"] = seen[key]
        else:
            seen[key] = name
            first = [int(np.argmax(d.groups == g)) for g in range(int(d.groups.max()) + 1)]
            entry.update(
                sources=list(d.sources), groups=encode_array(d.groups, "u16"),
                first=encode_array(np.array(first + ([0] if d.has_bias else [])), "u16"),
                has_bias=bool(d.has_bias),
                norm=metric(d, "norm", False), delta=metric(d, "delta_norm", False),
                proj=metric(d, "proj", True),
                logit_attr=encode_array(d.logit_attr, "f16"))
            if d.logit_mean_last is not None:
                entry["logit_mean"] = encode_array(d.logit_mean_last, "f32")
        out_variants.append(entry)

    doc = {
        "schema": SCHEMA,
        "generator": {"infoflow": __version__, "engine": ENGINE_VERSION},
        "built": built or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "prompt": prompt,
        "model": base.model,
        "precision": base.precision,
        "layers": L, "positions": P, "top_k": k,
        "tokens": list(base.tokens),
        "token_ids": encode_array(base.token_ids, "u32"),
        "strings": [base.token_text[i] for i in ids],
        "embed_norm": encode_array(base.embed_norm, "f32"),
        "recon_error": encode_array(base.recon_error, "f32"),
        "worst_recon_error": float(base.worst_recon_error),
        "logit_error": float(base.logit_error),
        "predictions": {"ids": encode_array(to_index(base.pred_ids), idx_dtype),
                        "probs": encode_array(base.pred_probs, "f32"),
                        "logits": encode_array(base.pred_logits, "f32")},
        "lens": None if base.lens_ids is None else {
            "ids": encode_array(to_index(base.lens_ids), idx_dtype),
            "probs": encode_array(base.lens_probs, "f16")},
        "lens_last": None if base.lens_track_ids is None else {
            "ids": encode_array(to_index(base.lens_track_ids), idx_dtype),
            "probs": encode_array(base.lens_track_probs, "f32"),
            "ranks": encode_array(base.lens_track_ranks, "u32"),
            "target": base.lens_target},
        "variants": out_variants,
    }
    if heads and base.heads is not None:
        doc["heads"] = heads_document(variants)     # cached with the rest; published apart
    doc.update(extra or {})
    return msgpack.packb(doc, use_bin_type=True)


# ----------------------------------------------------------------------------- per-head data
# A companion document per prompt (docs/data-format.md, "Per-head data"), kept in the cache
# entry under "heads" and published as its own file, so the main file neither grows nor waits.


def heads_document(variants: dict[str, Decomposition]) -> dict:
    """Per-head arrays of every distinct grouping, quantized as the main file's metrics."""
    base = next(iter(variants.values()))
    hb = base.heads
    L, H = hb.pattern.shape[:2]
    P = base.n_tokens
    out, seen = [], {}
    for name, d in variants.items():
        key = tuple(d.groups.tolist())
        if key in seen:
            out.append({"name": name, "same_as": seen[key]})
            continue
        seen[key] = name
        h, rows, tail = d.heads, row_lengths(d.groups), int(d.has_bias)
        out.append({"name": name,
                    "norm": encode_tril(h.norm, rows, tail, signed=False),
                    "proj": encode_tril(h.proj, rows, tail, signed=True)})
    return {"schema": SCHEMA, "kind": "heads", "layers": L, "heads": H, "positions": P,
            "labels": list(hb.labels),
            "write_norm": encode_array(hb.write_norm, "f32"),      # the same for every grouping
            "write_proj": encode_array(hb.write_proj, "f32"),
            "pattern": encode_tril(hb.pattern, list(range(1, P + 1)), 0, signed=False),
            "variants": out}


def heads_page_bytes(doc: dict, main_name: str) -> bytes | None:
    """The bytes of a prompt's per-head file (None when its document has none), naming the
    main file it belongs to, so a reader can refuse a mismatched pair."""
    if not isinstance(doc.get("heads"), dict):
        return None
    return msgpack.packb({**doc["heads"], "main": main_name}, use_bin_type=True)


def heads_path(main: str | Path) -> Path:
    """data/<id>.<hash>.msgpack -> data/heads/<id>.<hash>.msgpack (a folder of its own, so that
    globs over data/*.msgpack and data/<id>.*.msgpack still find the main files only)"""
    main = Path(main)
    return main.parent / "heads" / main.name


def saved_heads_path(main: str | Path) -> Path:
    """x.msgpack -> x.heads.msgpack beside it: where the live page's "Heads file" download goes
    (a browser saves into one folder; docs/live-format.md, "Saving a result")."""
    main = Path(main)
    return main.with_name(f"{main.stem}.heads{main.suffix}")


def load_heads(main: str | Path, name: str = "tokens") -> Heads:
    """The per-head data of grouping `name`, from the companion file of the data file `main`:
    data/heads/<name> as a site has it, else <stem>.heads<suffix> beside it, as saved from the
    live page."""
    path = heads_path(main)
    if not path.exists() and saved_heads_path(main).exists():
        path = saved_heads_path(main)
    if not path.exists():
        raise DataFileError(f"{path}: no per-head file for {Path(main).name} (nor "
                            f"{saved_heads_path(main).name} beside it); rebuild the site "
                            "with this version of infoflow to get one")
    doc = read(path)
    try:
        if doc.get("kind") != "heads":
            raise DataFileError(f"{path}: not a per-head file (kind {doc.get('kind')!r})")
        if doc.get("main") not in (None, Path(main).name):
            raise DataFileError(f"{path}: belongs to {doc['main']}, not {Path(main).name}")
        by_name = {v["name"]: v for v in doc["variants"]}
        if name not in by_name:
            raise DataFileError(f"{path}: no variant {name!r}; it has {sorted(by_name)}")
        v = by_name[by_name[name]["same_as"]] if "same_as" in by_name[name] else by_name[name]
        return Heads(labels=list(doc["labels"]), norm=decode_array(v["norm"]), proj=decode_array(v["proj"]),
                     write_norm=decode_array(doc["write_norm"]), write_proj=decode_array(doc["write_proj"]),
                     pattern=decode_array(doc["pattern"]))
    except (KeyError, TypeError, IndexError) as e:
        raise DataFileError(f"{path}: missing or malformed field {e}") from e


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def page_bytes(doc: dict, prompt: dict) -> tuple[bytes, str]:
    """The bytes of a site's data file: `doc` with the prompt's current metadata (titles, tags and
    notes change without recomputing) and without its compute time, so sharded and single builds
    and repeated publishes give identical files.   -> (bytes, the time `doc` was computed)"""
    page = {k: v for k, v in doc.items() if k not in ("built", "heads", "graph")}   # sidecars: apart
    page["prompt"] = prompt
    return msgpack.packb(page, use_bin_type=True), doc.get("built", "")


def summarize(doc: dict) -> dict:
    """What the gallery index shows of a document: size, top prediction, error, model."""
    pred = decode_array(doc["predictions"]["ids"])
    probs = decode_array(doc["predictions"]["probs"])
    return {"n_tokens": doc["positions"], "top_prediction": doc["strings"][int(pred[-1, 0])],
            "top_prob": float(probs[-1, 0]), "worst_recon_error": doc["worst_recon_error"],
            "model": doc["model"]["id"]}


def thumbnail_norms(doc: dict) -> np.ndarray:
    """The words variant's cumulative norms, (L, 2, P, G), as the thumbnails draw them."""
    return decode_array(variant(doc, "words")["norm"])


# ----------------------------------------------------------------------------- cache entries
# A cache entry is msgpack [key, document] followed by the sha256 of those bytes. The key inside
# the checksummed bytes binds the entry to its name: bytes copied over another entry are refused.


def pack_entry(key: str, body: bytes) -> bytes:
    """A cache entry for the data-file bytes `body` (as encode() returns them) under `key`."""
    doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
    blob = msgpack.packb([key, doc], use_bin_type=True)
    return blob + hashlib.sha256(blob).digest()


def unpack_entry(raw: bytes, key: str) -> dict:
    """The document in a cache entry; DataFileError when it is truncated, corrupt, stored under
    another key, of another schema or malformed."""
    blob, digest = raw[:-32], raw[-32:]
    if len(raw) < 33 or hashlib.sha256(blob).digest() != digest:
        raise DataFileError("checksum mismatch (truncated or corrupt)")
    try:
        entry = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData) as e:
        raise DataFileError(f"not msgpack ({e})") from e
    if not (isinstance(entry, list) and len(entry) == 2):
        raise DataFileError("not a [key, document] pair")
    if entry[0] != key:
        raise DataFileError(f"it belongs to key {entry[0]!r}, not {key!r} (copied over another entry?)")
    check_document(entry[1])
    return entry[1]


def check_document(doc) -> None:
    """Raise DataFileError, naming the field, unless `doc` has the fields, types and sizes every
    reader relies on: the viewer's checks (checkDocument, decodeVariant and decodeData in
    site_src/static/js/data.js), all made on the declared shapes, before any array is decoded."""
    def need(ok: bool, what: str):
        if not ok:
            raise DataFileError(f"malformed document: {what}")
    need(isinstance(doc, dict), "not a map")
    need(doc.get("schema") == SCHEMA, f"schema {doc.get('schema')!r}, expected {SCHEMA}")
    for key, limit in (("layers", "layers"), ("positions", "positions"), ("top_k", "top_k")):
        need(_is_count(doc.get(key)) and doc[key] > 0, f"`{key}` is not a positive integer")
        need(doc[key] <= LIMITS[limit], f"`{key}` = {doc[key]}, more than infoflow reads (at most {LIMITS[limit]})")
    L, P, k = doc["layers"], doc["positions"], doc["top_k"]
    need(isinstance(doc.get("tokens"), list) and len(doc["tokens"]) == P
         and all(isinstance(t, str) for t in doc["tokens"]), "`tokens` is not a list of `positions` strings")
    need(isinstance(doc.get("strings"), list) and all(isinstance(t, str) for t in doc["strings"]),
         "`strings` is not a list of strings")
    need(len(doc["strings"]) <= LIMITS["strings"], f"`strings` has more than {LIMITS['strings']} entries")
    need(isinstance(doc.get("model"), dict) and "id" in doc["model"] and "fingerprint" in doc["model"],
         "`model` lacks id or fingerprint")
    need(isinstance(doc.get("prompt", {}), dict), "`prompt` is not a map")
    pred = doc.get("predictions")
    need(isinstance(pred, dict) and all(isinstance(pred.get(key), dict) for key in ("ids", "probs", "logits")),
         "`predictions` lacks ids, probs or logits")
    for key in ("ids", "probs", "logits"):
        _expect(pred[key], [P, k], f"predictions.{key}")
    _expect(doc.get("token_ids"), [P], "token_ids")
    _expect(doc.get("embed_norm"), [P], "embed_norm")
    _expect(doc.get("recon_error"), [L, 2], "recon_error")
    for key in ("worst_recon_error", "logit_error"):
        need(isinstance(doc.get(key), (int, float)) and not isinstance(doc.get(key), bool),
             f"`{key}` is not a number")
    lens = doc.get("lens")
    if lens is not None:
        need(isinstance(lens, dict), "`lens` is not a map")
        for key in ("ids", "probs"):
            _expect(lens.get(key), [L, 2, P, k], f"lens.{key}")
    track = doc.get("lens_last")
    if track is not None:
        need(isinstance(track, dict), "`lens_last` is not a map")
        check_array(track.get("ids"), "lens_last.ids")
        m = track["ids"]["shape"][0] if len(track["ids"]["shape"]) == 1 else -1
        need(1 <= m <= k + 1, f"`lens_last.ids` holds {m} tokens, expected 1 .. top_k + 1 = {k + 1}")
        _expect(track["ids"], [m], "lens_last.ids")
        for key in ("probs", "ranks"):
            _expect(track.get(key), [m, L, 2], f"lens_last.{key}")
        t = track.get("target")
        need(t is None or (_is_count(t) and t < m), f"`lens_last.target` is {t!r}, not a row of lens_last.ids")
        total_track = 2 * m * L * 2
    else:
        total_track = 0
    variants = doc.get("variants")
    need(isinstance(variants, list) and variants and all(isinstance(v, dict) and isinstance(v.get("name"), str)
                                                         for v in variants), "`variants` is not a list of named maps")
    need(len(variants) <= LIMITS["variants"], f"`variants` has more than {LIMITS['variants']} entries")
    names = {v["name"] for v in variants}
    need({"tokens", "words"} <= names, "the tokens or words variant is missing")
    total = (2 * L * 2 * P * k if lens is not None else 0) + 3 * P * k + total_track
    for v in variants:
        name = v["name"]
        if "same_as" in v:
            need(v["same_as"] in names and v["same_as"] != v["name"], f"variant {name!r}: bad same_as")
            continue
        need(all(isinstance(v.get(key), dict) for key in ("norm", "delta", "proj", "logit_attr", "groups", "first")),
             f"variant {name!r} lacks arrays")
        need(isinstance(v.get("sources"), list) and all(isinstance(x, str) for x in v["sources"]),
             f"variant {name!r}: `sources` is not a list of strings")
        G = len(v["sources"])
        need(G <= P + 1, f"variant {name!r} has {G} sources for {P} positions")
        for key in ("norm", "delta", "proj"):
            _expect(v[key], [L, 2, P, G], f"variants[{name}].{key}")
        _expect(v["logit_attr"], [P, k, G], f"variants[{name}].logit_attr")
        _expect(v["groups"], [P], f"variants[{name}].groups")
        _expect(v["first"], [G], f"variants[{name}].first")
        if v.get("logit_mean") is not None:              # absent from files written before it
            _expect(v["logit_mean"], [G], f"variants[{name}].logit_mean")
        total += 3 * L * 2 * P * G + P * k * G
    need(total <= LIMITS["total"], f"its arrays total {total} values, more than infoflow reads "
         f"(at most {LIMITS['total']})")


def _expect(obj, shape: list[int], what: str) -> None:
    """An array of exactly `shape`, its sizes within LIMITS (checked, not decoded)."""
    check_array(obj, what)
    if list(obj["shape"]) != shape:
        raise DataFileError(f"malformed document: `{what}` has shape {obj['shape']}, expected {shape}")


def check_decoded(d: Decomposition, doc: dict) -> None:
    """What only the decoded values show: every index within the table it points into."""
    strings, G = len(doc["strings"]), len(d.sources)
    if d.groups.size and (d.groups.min() < 0 or d.groups.max() >= G):
        raise DataFileError(f"malformed document: `groups` names source {int(d.groups.max())}, "
                            f"but the variant has {G} sources")
    for what, ids in (("predictions.ids", d.pred_ids), ("lens.ids", d.lens_ids), ("lens_last.ids", d.lens_track_ids)):
        if ids is not None and ids.size and ids.max() >= strings:
            raise DataFileError(f"malformed document: `{what}` names string {int(ids.max())}, but the "
                                f"string table has {strings}")


def variant(doc: dict, name: str) -> dict:
    """Variant `name` of a document, following `same_as` to the variant that holds the arrays
    (keeping the requested variant's own grouping)."""
    by_name = {v["name"]: v for v in doc["variants"]}
    if name not in by_name:
        raise DataFileError(f"no variant {name!r}; this file has {sorted(by_name)}")
    v = by_name[name]
    return by_name[v["same_as"]] | {"grouping": v["grouping"]} if "same_as" in v else v


# ----------------------------------------------------------------------------- read


def read(path: str | Path) -> dict:
    """The raw msgpack document, schema-checked, its size bounded before it is read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataFileError(f"{path}: {size} bytes, more than infoflow reads ({MAX_FILE_BYTES} at most)")
        doc = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False,
                              max_str_len=1 << 24, max_bin_len=MAX_FILE_BYTES,
                              max_array_len=LIMITS["strings"], max_map_len=4096, max_ext_len=0)
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: a folder, not a data file") from None
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData) as e:
        raise DataFileError(f"{path}: not a valid msgpack data file ({e})") from e
    if not isinstance(doc, dict) or "schema" not in doc:
        raise DataFileError(f"{path}: not an infoflow data file (no schema number)")
    if doc["schema"] != SCHEMA:
        raise DataFileError(f"{path}: schema {doc['schema']!r}, but this infoflow reads schema {SCHEMA}; "
                            "rebuild it with this version")
    return doc


def load(path: str | Path, variant: str = "tokens") -> Decomposition:
    """Read a data file back into a Decomposition (one grouping variant; 'tokens' by default).

    The file is untrusted: it gets the viewer's checks (check_document) before any array is
    decoded, every array is bounded before it is allocated or inflated, and every problem is one
    DataFileError naming the file and the field."""
    doc = read(path)
    try:
        check_document(doc)
        d = _to_decomposition(doc, variant)
        check_decoded(d, doc)
    except DataFileError as e:
        raise DataFileError(f"{path}: {e}") from None
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise DataFileError(f"{path}: missing or malformed field {e}") from e
    d.head_data = lambda: load_heads(path, variant)     # read when d.heads is first used
    return d


def _to_decomposition(doc: dict, name: str) -> Decomposition:
    v = variant(doc, name)
    # Token ids of predictions come back as indices into the file's string table, and
    # token_text maps those indices to text, so d.token_text[d.pred_ids[p, j]] still works.
    strings = doc["strings"]
    norm, delta, proj = (decode_array(v[key], f"variants[{name}].{key}") for key in ("norm", "delta", "proj"))
    lens, track = doc.get("lens"), doc.get("lens_last")
    mean = v.get("logit_mean")
    return Decomposition(
        prompt=doc["prompt"]["text"], tokens=list(doc["tokens"]),
        token_ids=decode_array(doc["token_ids"], "token_ids").astype(np.int64),
        sources=list(v["sources"]), groups=decode_array(v["groups"], f"variants[{name}].groups").astype(np.int64),
        grouping=v["grouping"],
        attn_norm=norm[:, 0], mlp_norm=norm[:, 1], attn_delta_norm=delta[:, 0],
        mlp_delta_norm=delta[:, 1], attn_proj=proj[:, 0], mlp_proj=proj[:, 1],
        embed_norm=decode_array(doc["embed_norm"], "embed_norm"),
        pred_ids=decode_array(doc["predictions"]["ids"], "predictions.ids").astype(np.int64), pred_probs=decode_array(doc["predictions"]["probs"], "predictions.probs"),
        pred_logits=decode_array(doc["predictions"]["logits"], "predictions.logits"),
        logit_attr=decode_array(v["logit_attr"], f"variants[{name}].logit_attr").astype(np.float32),
        recon_error=decode_array(doc["recon_error"], "recon_error"), logit_error=float(doc["logit_error"]),
        lens_ids=None if lens is None else decode_array(lens["ids"], "lens.ids").astype(np.int64),
        lens_probs=None if lens is None else decode_array(lens["probs"], "lens.probs").astype(np.float32),
        token_text=dict(enumerate(strings)),
        logit_mean_last=None if mean is None else decode_array(mean, f"variants[{name}].logit_mean"),
        lens_track_ids=None if track is None else decode_array(track["ids"], "lens_last.ids").astype(np.int64),
        lens_track_probs=None if track is None else decode_array(track["probs"], "lens_last.probs"),
        lens_track_ranks=None if track is None else decode_array(track["ranks"], "lens_last.ranks").astype(np.int64),
        lens_target=None if track is None else track.get("target"),
        model=dict(doc["model"]), precision=doc["precision"], version=doc["generator"]["infoflow"],
        has_bias=bool(v["has_bias"]))

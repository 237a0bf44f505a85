"""The default model for the in-browser engine (docs/live-format.md): weights, tokenizer, page.

We ship the GGUF's own quantized blocks, byte for byte, and the browser dequantizes them the
way the Python conversion did (gguf-py's numpy code in float32, then transformers' q/k
un-permutation), so both engines see the same float32 weights. The export is cached under
the infoflow cache, keyed by the GGUF file and this format's version, so a rebuild copies it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import ENGINE_VERSION, __version__
from .model import (DEFAULT_MODEL, OFFLINE_MODELS, _folder_fingerprint, _gguf_path as _model_gguf, cache_dir,
                    converted_default_model)

FORMAT = "infoflow-live"
FORMAT_VERSION = 1
EXPORT_REVISION = 3             # bump when the export of the same GGUF changes (cache key)
CHUNK_BYTES = 16 << 20            # ≤ 20 MB per file: GitHub Pages and CDNs take it happily
MAX_TOTAL_BYTES = 110_000_000     # the whole download
MAX_PARAMETERS = 500_000_000      # beyond ~0.5 B parameters a browser tab is the wrong place
ALIGN = 64                        # every tensor starts at a multiple of this in the byte stream
QUANT = {                         # GGUF type: (values per block, bytes per block)
    "F32": (1, 4), "Q8_0": (32, 34), "Q4_1": (32, 20),
}
LIVE_DIR = "live"                 # in the site: live/index.html, live/model/*


class LiveExportError(Exception):
    """The model cannot be exported for the browser; the message says why."""


# ----------------------------------------------------------------------------- names


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> the PyTorch parameter name of the converted model."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}
    pieces = gguf_name.split(".")                                    # blk.<i>.<part>.weight
    if len(pieces) != 4 or pieces[0] != "blk" or pieces[2] not in parts or pieces[3] != "weight":
        # e.g. a bias: the page (weights.js) passes the engine no biases, so it would run a
        # different model than Python's; better no live page than a wrong one
        raise LiveExportError(f"GGUF tensor {gguf_name} is not one the live page loads (the layers' "
                              "weight matrices and norms, the embedding, output norm and output): "
                              "models with biases or other extra tensors are not exported for the browser")
    return f"model.layers.{pieces[1]}.{parts[pieces[2]]}.weight"


def permute_heads(gguf_name: str, heads: int, kv_heads: int) -> int | None:
    """llama.cpp stores q and k rows interleaved for its RoPE; transformers un-permutes them
    with this many heads (its LlamaTensorProcessor), we do the same."""
    if ".attn_q." in gguf_name:
        return heads
    if ".attn_k." in gguf_name:
        return kv_heads
    return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' _reverse_permute_weights: (out, in) rows [h, 2, dim] -> [h, dim, 2]."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


# ----------------------------------------------------------------------------- export


def _gguf_path() -> Path:
    """The default model's GGUF inside its package (not assembled, so no scratch folder)."""
    return _model_gguf(OFFLINE_MODELS[DEFAULT_MODEL], scratch=Path("."))


def _export_key(gguf: Path) -> str:
    st = gguf.stat()
    blob = json.dumps([FORMAT_VERSION, EXPORT_REVISION, CHUNK_BYTES, ALIGN, str(gguf.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _content_name(stem: str, data: bytes, ext: str) -> str:
    return f"{stem}.{hashlib.sha256(data).hexdigest()[:12]}.{ext}"


def _model_config(reader, folder: Path) -> dict:
    """What the engine needs to know, read from the converted model's config.json."""
    cfg = json.loads((folder / "config.json").read_text())
    heads = int(cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or {}
    return {
        "layers": int(cfg["num_hidden_layers"]), "d_model": int(cfg["hidden_size"]),
        "heads": heads, "kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        "d_mlp": int(cfg["intermediate_size"]), "vocab": int(cfg["vocab_size"]),
        "rms_norm_eps": float(cfg["rms_norm_eps"]),
        "rope_theta": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(cfg.get("attention_bias", False)),
        "mlp_bias": bool(cfg.get("mlp_bias", False)),
    }


def _model_info(folder: Path, config: dict) -> dict:
    """The data file's `model` map, as infoflow.model.model_info writes it for this model."""
    cfg = json.loads((folder / "config.json").read_text())
    return {"id": DEFAULT_MODEL, "fingerprint": _folder_fingerprint(folder),
            "architecture": (cfg.get("architectures") or ["LlamaForCausalLM"])[0],
            "layers": config["layers"], "d_model": config["d_model"], "heads": config["heads"],
            "kv_heads": config["kv_heads"], "d_mlp": config["d_mlp"], "vocab": config["vocab"],
            "dtype": "float32"}


def _ranges(pred) -> list[list[int]]:
    """Inclusive [first, last] code-point ranges where pred(character) holds."""
    out, start = [], None
    for c in range(0x110000):
        if pred(chr(c)):
            start = c if start is None else start
        elif start is not None:
            out.append([start, c - 1])
            start = None
    if start is not None:
        out.append([start, 0x10FFFF])
    return out


def word_tables() -> dict:
    """tokens.py's words rule needs str.isspace, str.isdigit and unicodedata categories; JS
    has other Unicode tables, so we ship Python's as ranges (about 6 KB)."""
    import unicodedata
    return {"unicode": unicodedata.unidata_version,
            "space": _ranges(str.isspace),
            "word_start": _ranges(lambda ch: ch.isspace() or ch.isdigit()
                                  or unicodedata.category(ch).startswith(("P", "S")))}


def _tokenizer_meta(folder: Path) -> dict:
    """Special ids and chat template exactly as the Python tokenizer sees them."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return {"special_ids": sorted(int(i) for i in (tok.all_special_ids or [])),
            "chat_template": getattr(tok, "chat_template", None) or None,
            "bos_token": tok.bos_token, "eos_token": tok.eos_token, "words": word_tables()}


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def browser_tokenizer(tok: dict) -> dict:
    """tokenizer.json for @huggingface/tokenizers, with the same meaning as for Python.

    A ByteLevel pre-tokenizer with use_regex=True splits with the GPT-2 pattern; the Rust
    library compiles it with Oniguruma, whose \\s is Unicode White_Space, but the JS library
    hard-codes it as a JS RegExp, whose \\s misses U+0085 (NEL) and adds U+FEFF. We spell the
    same split out as a Split pre-tokenizer (which the JS library translates with Oniguruma
    semantics, \\s -> \\p{White_Space}) followed by a ByteLevel that does not split again.
    tests/test_live.py checks that Python gives identical ids with both files.
    """
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        tok = dict(tok, pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
            dict(pre, use_regex=False)]})
    return tok


def _build_export(reader, folder: Path, target: Path) -> None:
    """Write chunks, tokenizer and manifest.json into `target` (a fresh folder), from the
    GGUF's `reader` (gguf.GGUFReader)."""
    config = _model_config(reader, folder)
    tensors, stream, offset = [], [], 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in QUANT:
            raise LiveExportError(f"tensor {t.name} is {kind}; the browser dequantizes only {sorted(QUANT)}")
        raw = np.asarray(t.data).view(np.uint8).tobytes()
        pad = -offset % ALIGN
        stream.append(b"\0" * pad)
        offset += pad
        shape = [int(n) for n in reversed(t.shape.tolist())]          # GGUF ne order -> [out, in]
        tensors.append({"name": hf_name(t.name), "gguf": t.name, "type": kind, "shape": shape,
                        "offset": offset, "bytes": len(raw),
                        "permute_heads": permute_heads(t.name, config["heads"], config["kv_heads"])})
        stream.append(raw)
        offset += len(raw)
    blob = b"".join(stream)
    if len(blob) > MAX_TOTAL_BYTES:
        raise LiveExportError(f"the weights take {len(blob) / 1e6:.0f} MB, over the {MAX_TOTAL_BYTES / 1e6:.0f} MB limit")
    chunks = []
    for i, a in enumerate(range(0, len(blob), CHUNK_BYTES)):
        part = blob[a:a + CHUNK_BYTES]
        name = _content_name(f"weights-{i:02d}", part, "chunk")   # not .bin: publish refuses *.bin
        (target / name).write_bytes(part)
        chunks.append({"file": name, "bytes": len(part), "sha256": hashlib.sha256(part).hexdigest()})
    tok_json = browser_tokenizer(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
    tok_bytes = json.dumps(tok_json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    tok_name = _content_name("tokenizer", tok_bytes, "json")
    (target / tok_name).write_bytes(tok_bytes)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "generator": {"infoflow": __version__, "engine": ENGINE_VERSION},
        "model": _model_info(folder, config), "config": config,
        "tokenizer": {"file": tok_name, "bytes": len(tok_bytes), "sha256": hashlib.sha256(tok_bytes).hexdigest(),
                      **_tokenizer_meta(folder)},
        "total_bytes": len(blob), "chunks": chunks, "tensors": tensors,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")


def check_size(reader) -> int:
    """The GGUF's parameter count; LiveExportError past MAX_PARAMETERS (read from its header
    by `reader`, a gguf.GGUFReader)."""
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    if n_params > MAX_PARAMETERS:
        raise LiveExportError(f"{n_params / 1e9:.2f} B parameters is too large for a browser tab "
                              f"(limit ~{MAX_PARAMETERS / 1e9:.1f} B)")
    return n_params


EXPORT_MARK = ".infoflow-export"   # inside each temporary export folder: ours to remove if left behind
LOCK_WAIT_SECONDS = 600


@contextlib.contextmanager
def _export_lock(root: Path):
    """One export or copy at a time per cache: a build never copies an export that another
    is replacing, and leftover folders seen under the lock are no one's work in progress."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(root / ".export.lock"), timeout=LOCK_WAIT_SECONDS):
            yield
    except Timeout:
        raise LiveExportError(f"another infoflow process has held {root / '.export.lock'} for "
                              f"{LOCK_WAIT_SECONDS // 60} minutes; let it finish, then build again") from None


def _remove_leftovers(root: Path, log) -> None:
    """Temporary export folders of a killed export (~100 MB each). Only those holding our mark
    are removed; any other `.export-*` folder is someone else's, named and left alone."""
    for folder in sorted(root.glob(".export-*")):
        if (folder / EXPORT_MARK).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                log(f"warning: could not remove {folder}, left by an interrupted live export; remove it by hand")
        else:
            log(f"warning: {folder} lacks the mark of infoflow's live export, so it is left alone "
                "(an older infoflow's interrupted export has none: remove it by hand if it is not yours)")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def export_problem(folder: Path) -> str | None:
    """What is wrong with an export in the cache (missing, unreadable, a file missing or not
    the bytes its manifest names), or None when every file is intact."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        files = [(c["file"], c["bytes"], c["sha256"]) for c in manifest["chunks"]]
        t = manifest["tokenizer"]
        files.append((t["file"], t["bytes"], t["sha256"]))
    except FileNotFoundError:
        return "its manifest.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest.json is unreadable ({type(e).__name__})"
    for name, size, digest in files:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size or _sha256_file(path) != digest:
            return f"{name} is corrupt (its sha256 does not match the manifest)"
    return None


def cached_export(cache: str | os.PathLike | None = None, log=print) -> Path:
    """The exported default model in the cache (chunks, tokenizer, manifest.json), made once,
    checked file by file at every use and exported again when damaged."""
    root = cache_dir(cache) / "live"
    root.mkdir(parents=True, exist_ok=True)
    with _export_lock(root):
        return _checked_export(root, cache, log)


def _checked_export(root: Path, cache, log) -> Path:
    """cached_export, with the cache's export lock held."""
    gguf = _gguf_path()
    target = root / _export_key(gguf)
    _remove_leftovers(root, log)
    if target.exists():
        problem = export_problem(target)
        if problem is None:
            return target
        log(f"the live export in the cache is damaged ({problem}); exporting it again")
    import gguf as ggufpy
    reader = ggufpy.GGUFReader(gguf)    # parsed once: ~6 s for the vocabulary, in Python
    check_size(reader)
    folder = converted_default_model(cache)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".export-"))
    try:
        (tmp / EXPORT_MARK).write_text("a live export in progress; removed by the next one if left behind\n")
        _build_export(reader, folder, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        (target / EXPORT_MARK).unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():       # exports of an older format or GGUF (~100 MB each)
        if old != target and (old / "manifest.json").exists():
            shutil.rmtree(old, ignore_errors=True)
    return target


def export_live_model(site_dir: Path, site: dict, *, model: str | None = None,
                      cache: str | os.PathLike | None = None, log=print) -> str | None:
    """Put the browser model and the page live/index.html into `site_dir`.

    Returns the page's path relative to the site root, or None (with a message) when the
    model cannot run in a browser.
    """
    from .site import render_live
    if model not in (None, DEFAULT_MODEL):
        log(f"live page skipped: only the default model ({DEFAULT_MODEL}) is exported for the browser, "
            f"not {model!r}")
        return None
    dest = Path(site_dir) / LIVE_DIR / "model"
    root = cache_dir(cache) / "live"
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _export_lock(root):          # held while copying: no other build replaces it meanwhile
            src = _checked_export(root, cache, log)
            manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
            dest.mkdir(parents=True, exist_ok=True)
            for name in [c["file"] for c in manifest["chunks"]] + [manifest["tokenizer"]["file"]]:
                copy_file(src / name, dest / name)
            body = (src / "manifest.json").read_bytes()
    except LiveExportError as e:
        log(f"live page skipped: {e}")
        return None
    manifest_name = _content_name("manifest", body, "json")
    (dest / manifest_name).write_bytes(body)
    site["live_manifest"] = f"{LIVE_DIR}/model/{manifest_name}"   # gallery pages: exact custom groups
    site["live_mb"] = round(manifest["total_bytes"] / 1e6)              # ... which say the download first
    from .gallery_models import model_slug
    render_live(Path(site_dir), site, manifest=f"model/{manifest_name}",
                total_mb=manifest["total_bytes"] / 1e6, config=manifest["config"],
                has_chat=bool(manifest["tokenizer"].get("chat_template")), model_key=model_slug(DEFAULT_MODEL))
    return f"{LIVE_DIR}/index.html"


FICLONE = 0x40049409             # linux/fs.h: share the blocks copy-on-write (fcntl.FICLONE from 3.12)


def copy_file(src: Path, dest: Path) -> None:
    """A copy of its own, never a hard link: the site must not change when the cache does.
    A reflink where the filesystem offers one (btrfs, XFS): instant, and just as independent."""
    if sys.platform == "linux":
        import fcntl
        with open(src, "rb") as s, open(dest, "wb") as d:
            try:
                fcntl.ioctl(d.fileno(), getattr(fcntl, "FICLONE", FICLONE), s.fileno())
                return
            except OSError:
                pass             # ext4, tmpfs, another filesystem: an ordinary copy
    shutil.copyfile(src, dest)


# ----------------------------------------------------------------------------- read back


def read_manifest(folder: Path) -> tuple[dict, Path]:
    """The manifest of an export: a cache folder (manifest.json) or a site's live/model/,
    whose manifest.<hash>.json must have the content hash its name says (as the page checks)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        found = sorted(folder.glob("manifest.*.json"))
        if len(found) != 1:
            raise LiveExportError(f"{folder}: expected one manifest.json or manifest.<hash>.json")
        path = found[0]
    body = path.read_bytes()
    if path.name != "manifest.json" and path.name != _content_name("manifest", body, "json"):
        raise LiveExportError(f"{path} does not have the content hash its name says: it was changed "
                              "after the build; build the site again")
    return json.loads(body.decode("utf-8")), path


def read_stream(folder: Path, manifest: dict) -> bytes:
    """All chunks, sha256-checked, as one byte stream."""
    parts = []
    for c in manifest["chunks"]:
        data = (Path(folder) / c["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != c["sha256"] or len(data) != c["bytes"]:
            raise LiveExportError(f"chunk {c['file']} is corrupt (sha256 mismatch)")
        parts.append(data)
    return b"".join(parts)


def dequantize(entry: dict, stream: bytes) -> np.ndarray:
    """One tensor as float32 [out, in], exactly as the Python conversion made it."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    raw = np.frombuffer(stream, dtype=np.uint8, count=entry["bytes"], offset=entry["offset"])
    shape = entry["shape"]
    per, size = QUANT[entry["type"]]
    raw = raw.reshape(*shape[:-1], shape[-1] // per * size)
    w = gguf_dequantize(raw, GGMLQuantizationType[entry["type"]]).reshape(shape)
    if entry.get("permute_heads"):
        w = unpermute_rows(w, entry["permute_heads"])
    return np.ascontiguousarray(w, dtype=np.float32)


def read_live_model(folder: Path) -> dict[str, np.ndarray]:
    """Decode a whole export back into {PyTorch parameter name: float32 array}."""
    manifest, _ = read_manifest(folder)
    stream = read_stream(folder, manifest)
    return {t["name"]: dequantize(t, stream) for t in manifest["tensors"]}

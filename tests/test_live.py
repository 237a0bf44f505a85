"""The live page (issue 11): export, weights, tokenizer, encoder, bad input, end to end.

The browser side runs in Debian's chromium (Python Playwright) against a built site served
from 127.0.0.1; pure modules (dequant.js, encode.js) also run in node where that is the same
module. The real-model tests use the `gallery` fixture (tests/conftest.py), built with the
live export on.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.test_browser import browser  # noqa: F401  (the session's one shared Chromium)

ROOT = Path(__file__).resolve().parent.parent
LIVE_JS = ROOT / "site_src" / "static" / "js" / "live"
NODE = shutil.which("node")
SHOTS = Path(os.environ.get("INFOFLOW_LIVE_SHOTS", ROOT / "test-artifacts"))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def live_dir(gallery_site) -> Path:
    return Path(gallery_site) / "live" / "model"


@pytest.fixture(scope="session")
def manifest(live_dir) -> dict:
    from infoflow.live import read_manifest
    return read_manifest(live_dir)[0]


@pytest.fixture(scope="session")
def converted() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    from infoflow.model import converted_default_model
    return load_file(str(converted_default_model() / "model.safetensors"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")   # only the Cache Storage may keep chunks
        super().end_headers()

    # file name -> times served, each time with byte 1000 flipped. Here, not in a Playwright route:
    # a route passes the 16 MB body through the DevTools protocol, which took ~6 s.
    corrupt: dict[str, int] = {}
    # file name -> times served as a 200 response that never ends (no Content-Length): a burst of
    # twice the file's size, then a byte every 0.2 s for a minute or until the client hangs up.
    endless: dict[str, int] = {}

    delay = 0.0                  # seconds before each chunk's response starts

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if self.delay and name.endswith(".chunk"):
            import time
            time.sleep(self.delay)
        if name in self.endless:
            return self._endless(name)
        if name not in self.corrupt:
            return super().do_GET()
        self.corrupt[name] += 1
        body = bytearray((Path(self.directory) / self.path.lstrip("/")).read_bytes())
        body[1000] ^= 0xFF
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


    def _endless(self, name):
        import time
        self.endless[name] += 1
        size = (Path(self.directory) / self.path.lstrip("/")).stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            block = b"\0" * (1 << 16)
            for _ in range(2 * size // len(block)):
                self.wfile.write(block)
            for _ in range(300):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass                 # the page hung up: what it should do
        self.close_connection = True


@pytest.fixture(scope="session")
def live_server(gallery_site):
    handler = functools.partial(_Quiet, directory=str(gallery_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def context(browser):
    """A fresh browser profile: empty Cache Storage."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def _need_node():
    if NODE is None:
        pytest.fail("node is not installed; the JS module tests need it (apt-get install nodejs)")


def _node(script: str, *args: str, stdin: str | None = None) -> str:
    _need_node()
    out = subprocess.run([NODE, "--input-type=module", "-e", script, "--", *args], input=stdin,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _open_live(page, url: str):
    page.goto(url)
    page.wait_for_function("() => document.documentElement.dataset.liveState")
    return page


def _wait_state(page, states, timeout=120_000):
    page.wait_for_function(f"() => {json.dumps(states)}.includes(document.documentElement.dataset.liveState)",
                           timeout=timeout)
    return page.evaluate("() => document.documentElement.dataset.liveState")


# ----------------------------------------------------------------------------- export


def test_export_chunks_are_small_hashed_and_complete(live_dir, manifest):
    total = 0
    for c in manifest["chunks"]:
        data = (live_dir / c["file"]).read_bytes()
        assert len(data) == c["bytes"] <= 20_000_000
        digest = hashlib.sha256(data).hexdigest()
        assert digest == c["sha256"] and c["file"].split(".")[-2] == digest[:12]
        total += len(data)
    assert total == manifest["total_bytes"] <= 110_000_000
    assert {t["type"] for t in manifest["tensors"]} <= {"F32", "Q8_0", "Q4_1"}
    ends = [t["offset"] + t["bytes"] for t in manifest["tensors"]]
    assert max(ends) <= total
    tok = live_dir / manifest["tokenizer"]["file"]
    assert hashlib.sha256(tok.read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"]


def test_python_reads_the_export_as_the_converted_weights(live_dir, converted):
    from infoflow.live import read_live_model
    weights = read_live_model(live_dir)
    assert set(weights) == set(converted)
    for name, w in weights.items():
        assert w.dtype == np.float32 and w.shape == converted[name].shape, name
        assert np.array_equal(w.view(np.uint32), converted[name].view(np.uint32)), name


def test_weight_hash_js_dequantizer_matches_python(live_dir, manifest, converted):
    """dequant.js (the worker's module) on the site's chunks: every tensor's float32 bytes
    hash equal to the converted safetensors the Python engine loads."""
    script = """
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { pathToFileURL } from "node:url";
const [mod, dir, man] = process.argv.slice(1);
const { dequantizeTensor } = await import(pathToFileURL(mod).href);
const m = JSON.parse(readFileSync(man));
const stream = new Uint8Array(Buffer.concat(m.chunks.map((c) => readFileSync(dir + "/" + c.file))));
const out = {};
for (const t of m.tensors) {
  const w = dequantizeTensor(t, stream);
  out[t.name] = createHash("sha256").update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength)).digest("hex");
}
console.log(JSON.stringify(out));
"""
    from infoflow.live import read_manifest
    js = json.loads(_node(script, str(LIVE_JS / "dequant.js"), str(live_dir), str(read_manifest(live_dir)[1])))
    assert set(js) == set(converted)
    bad = [n for n, w in converted.items()
           if hashlib.sha256(np.ascontiguousarray(w, dtype="<f4").tobytes()).hexdigest() != js[n]]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def test_layer_blocks_are_the_float_tensors_rows(live_dir):
    """weights.js's layerTensors hands the kernel Q4_1 blocks (raw.quantized) for the matrices it
    unpacks itself, q and k with their rows moved into PyTorch's order: in every layer, each
    such matrix's blocks dequantize to exactly the float tensor of the same name (which the test
    above checks against Python), q and k included."""
    script = """
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [dir, man, jsDir] = process.argv.slice(1);
const { LiveModel } = await import(pathToFileURL(jsDir + "/weights.js").href);
const { dequantizeInto } = await import(pathToFileURL(jsDir + "/dequant.js").href);
const m = JSON.parse(readFileSync(man));
const stream = new Uint8Array(Buffer.concat(m.chunks.map((c) => readFileSync(dir + "/" + c.file))));
const live = new LiveModel(m, stream, "");
const seen = {}, differ = [];
for (let i = 0; i < m.config.layers; i++) {
  const raw = live.layerTensors(i);
  for (const [key, q] of Object.entries(raw.quantized)) {
    const floats = raw[key], mine = dequantizeInto(q.type, q.bytes, new Float32Array(floats.length));
    seen[key] = (seen[key] || 0) + 1;
    if (!Buffer.from(mine.buffer).equals(Buffer.from(floats.buffer, floats.byteOffset, floats.byteLength))) differ.push(`${i}.${key}`);
  }
}
console.log(JSON.stringify({seen, differ}));
"""
    from infoflow.live import read_manifest
    manifest, path = read_manifest(live_dir)
    out = json.loads(_node(script, str(live_dir), str(path), str(LIVE_JS)))
    layers = manifest["config"]["layers"]
    assert out["seen"] == {k: layers for k in ("q", "k", "v", "o", "gate", "up", "down")}
    assert out["differ"] == []


def test_no_live_leaves_the_weights_out(gallery, tmp_path):
    from dataclasses import replace
    from infoflow.build import build
    out = tmp_path / "site"
    build(replace(gallery["cfg"], out=out, live=False), progress=False)
    assert not (out / "live").exists()
    assert "Try your own prompt" not in (out / "index.html").read_text()
    assert "Try your own prompt" in (Path(gallery["site"]) / "index.html").read_text()
    page = next((Path(gallery["site"]) / "p").glob("*.html")).read_text()
    assert 'href="../live/index.html"' in page


def test_large_models_are_skipped_with_a_message(tmp_path, monkeypatch):
    import infoflow.live as live
    monkeypatch.setattr(live, "MAX_PARAMETERS", 1000)
    monkeypatch.setattr(live, "EXPORT_REVISION", "test-too-large")
    said = []
    assert live.export_live_model(tmp_path, {}, cache=tmp_path / "cache", log=said.append) is None
    assert said and "too large" in said[0] and not (tmp_path / "live").exists()
    said.clear()
    assert live.export_live_model(tmp_path, {}, model="some/other-model", log=said.append) is None
    assert "only the default model" in said[0]


def test_bad_manifests_are_refused_before_anything_is_allocated(manifest):
    """weights.js's checkManifest, in node: the real manifest passes; each broken copy (sizes
    out of range, a tensor outside the stream or with the wrong byte count, an unknown type, a
    bad head count) is refused with a LoadError that names the problem."""
    import copy
    first = next(i for i, t in enumerate(manifest["tensors"]) if t["type"] == "Q4_1" and t["permute_heads"])
    breaks = {
        "total_bytes": lambda m: m.update(total_bytes=2 ** 40),
        "chunk sizes": lambda m: m["chunks"][0].update(bytes=m["chunks"][0]["bytes"] + 1),
        "lies outside": lambda m: m["tensors"][0].update(offset=m["total_bytes"]),
        "lies outside ": lambda m: m["tensors"][0].update(offset=-20),
        "bytes for": lambda m: m["tensors"][first].update(bytes=m["tensors"][first]["bytes"] - 20),
        "values": lambda m: m["tensors"][first].update(shape=[2 ** 20, 2 ** 20]),
        "type or shape": lambda m: m["tensors"][first].update(type="Q2_K"),
        "type or shape ": lambda m: m["tensors"][first].update(shape=[1.5, 64]),
        "permute_heads": lambda m: m["tensors"][first].update(permute_heads=7),
        "tokenizer file, bytes or sha256": lambda m: m["tokenizer"].update(bytes=2 ** 40),  # its read cap
    }
    cases = [manifest]
    for expect, mutate in breaks.items():
        m = copy.deepcopy(manifest)
        mutate(m)
        cases.append(m)
    script = f"""
import {{checkManifest}} from {json.dumps((ROOT / "site_src/static/js/live/weights.js").as_uri())};
const cases = JSON.parse(await new Response(process.stdin).text());
console.log(JSON.stringify(cases.map((m) => {{
  try {{ checkManifest(m); return "ok"; }} catch (e) {{ return e.name + ": " + e.message; }}
}})));
"""
    said = json.loads(_node(script, stdin=json.dumps(cases)))
    assert said[0] == "ok"
    for (expect, _), got in zip(breaks.items(), said[1:]):
        assert got.startswith("LoadError: The model's manifest is inconsistent") and expect.strip() in got, (expect, got)


def test_unknown_tensors_such_as_biases_refuse_the_export():
    """The page loads no biases: a GGUF with one must not be exported as if it were a weight."""
    import infoflow.live as live
    assert live.hf_name("blk.3.attn_output.weight") == "model.layers.3.self_attn.o_proj.weight"
    assert live.hf_name("output.weight") == "lm_head.weight"
    for name in ("blk.0.attn_q.bias", "output.bias", "blk.0.attn_q_norm.weight", "rope_freqs.weight"):
        with pytest.raises(live.LiveExportError, match="not one the live page loads"):
            live.hf_name(name)


# ----------------------------------------------------------------------------- tokenizer


def _random_strings(n: int, seed: int = 0) -> list[str]:
    """Seeded random Unicode: ASCII with controls, Latin-1 (NEL), the BMP minus surrogates, astral."""
    rng = random.Random(seed)
    pools = [(0, 0x7F), (0x80, 0xFF), (0x100, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF), (0x1F300, 0x1FAFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 24)):
            a, b = pools[rng.choices(range(len(pools)), weights=[6, 2, 4, 1, 1, 2])[0]]
            chars.append(chr(rng.randint(a, b)))
            if rng.random() < 0.15:
                chars.append(" " * rng.randint(1, 3))
        out.append("".join(chars))
    return out


SPECIAL_CASES = [
    "👩‍👩‍👧 family, 🏳️‍🌈 flag, 👍🏽 thumbs",                      # emoji with ZWJ and modifiers
    "مرحبا بالعالم", "שלום עולם", "abc ‮reversed‬ def",           # RTL and bidi controls
    "e\u0301 a\u0308 n\u0303 Z\u0335\u0321\u0354a\u0337l\u0336g\u0334o",  # combining marks
    "nul\x00 bell\x07 esc\x1b[31m tab\t cr\r lf\n ff\x0c vt\x0b del\x7f",  # NUL and controls
    "中文字符测试，日本語のテキスト、한국어 텍스트",                         # CJK
    " " * 40 + "x" + "\t" * 10 + "\n" * 7 + "  \n  \n", "   ", "\n\n\n\n",  # whitespace runs
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != 0: pass",  # code
    "for (let i = 0; i < n; i++) { s += a[i] * b[i]; }",
    " \x85x", "a\x85 b", "\x85", "  \x85\x85  ", " \ufeffx", "\u2028\u2029\u3000\u00a0\u1680",  # NEL and other spaces
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "don't won't I'm we'll they're",
    "1234567890 3.14159 1e-10 ½ ² ① ٣", "x" * 300,
]


def _corpus() -> list[str]:
    gallery = tomllib.loads((ROOT / "prompts" / "gallery.toml").read_text(encoding="utf-8"))["prompt"]
    return [p["text"] for p in gallery] + SPECIAL_CASES + _random_strings(10_000)


def _python_tokenize(texts: list[str], chat: bool = False):
    from infoflow.decompose import get_model
    from infoflow.tokens import display_tokens, word_groups
    tok = get_model(None).tokenizer
    special = set(tok.all_special_ids)
    out = []
    for t in texts:
        if chat:
            ids = tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            ids = tok(t)["input_ids"]
        disp = display_tokens(tok, ids)
        out.append({"ids": ids, "tokens": disp, "words": word_groups(disp, [i in special for i in ids])})
    return out


def test_tokenizer_rewrite_keeps_python_ids(live_dir, manifest):
    """The exported tokenizer.json (GPT-2 split spelled out) tokenizes like the original in Python."""
    from tokenizers import Tokenizer
    from infoflow.model import converted_default_model
    original = Tokenizer.from_file(str(converted_default_model() / "tokenizer.json"))
    shipped = Tokenizer.from_file(str(live_dir / manifest["tokenizer"]["file"]))
    texts = _corpus()
    a = original.encode_batch(texts)
    b = shipped.encode_batch(texts)
    assert [e.ids for e in a] == [e.ids for e in b]


BROWSER_TOKENIZE = """async ([texts, chat]) => {
  const { LiveTokenizer } = await import("../static/js/live/tokenize.js");
  const el = document.getElementById("live");
  const man = await (await fetch(el.dataset.manifest)).json();
  const tj = await (await fetch(new URL(man.tokenizer.file, new URL(el.dataset.manifest, location.href)))).json();
  const tok = new LiveTokenizer(tj, man.tokenizer);
  return JSON.stringify(texts.map((t) => {     // one string: Playwright is slow on 10,000 objects
    const ids = tok.encode(t, { chat });
    const tokens = tok.displayTokens(ids);
    return { ids, tokens, words: tok.wordGroups(tokens, ids.map((i) => tok.isSpecial(i))) };
  }));
}"""


@pytest.mark.browser
def test_tokenizer_corpus_matches_python_in_browser(context, live_server):
    """Token ids, display strings and words groups identical to Python on the whole corpus."""
    texts = _corpus()
    page = _open_live(context.new_page(), live_server + "live/index.html")
    js = json.loads(page.evaluate(BROWSER_TOKENIZE, [texts, False]))
    py = _python_tokenize(texts)
    diffs = [(t, p, j) for t, p, j in zip(texts, py, js) if p != j]
    assert not diffs, f"{len(diffs)} of {len(texts)} differ; first: {diffs[0]!r}"


@pytest.mark.browser
def test_chat_template_matches_python_in_browser(context, live_server):
    gallery = tomllib.loads((ROOT / "prompts" / "gallery.toml").read_text(encoding="utf-8"))["prompt"]
    texts = [p["text"] for p in gallery if p.get("chat")] + ["What is 2 + 2?", "héllo\n\nwörld 👩‍👩‍👧"]
    page = _open_live(context.new_page(), live_server + "live/index.html")
    assert json.loads(page.evaluate(BROWSER_TOKENIZE, [texts, True])) == _python_tokenize(texts, chat=True)


# ----------------------------------------------------------------------------- encoder


def test_encode_js_writes_what_infoflow_load_reads(default_model, tmp_path):
    """encode.js and encode-heads.js on a real Python result: infoflow.load gives back what
    datafile.encode gives, per-head data included."""
    import msgpack

    import infoflow
    from infoflow.datafile import encode, heads_page_bytes, page_bytes
    from infoflow.decompose import decompose_variants
    text = "When Mary and John went to the store, John gave a drink to"
    res = decompose_variants(text, default_model, {"tokens": None, "words": "words"},
                             lens_target=default_model.tokenizer.encode(" Paris", add_special_tokens=False)[0])
    prompt = {"id": "live", "title": "Your prompt", "text": text, "tags": [], "note": None, "chat": False}
    doc_bytes = encode(res, prompt, labels={"tokens": "none (each token)", "words": "by words"}, heads=True)
    doc = msgpack.unpackb(doc_bytes, raw=False, strict_map_key=False)
    (tmp_path / "py.msgpack").write_bytes(page_bytes(doc, prompt)[0])
    (tmp_path / "py.heads.msgpack").write_bytes(heads_page_bytes(doc, "py.msgpack"))   # as the live page saves it
    base = res["tokens"]
    arrays = {}

    def put(name, a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        (tmp_path / f"{name}.bin").write_bytes(a.tobytes())
        arrays[name] = dtype

    for key in ("token_ids", "pred_ids", "lens_ids"):
        put(key, getattr(base, key), "<i4")
    for key in ("embed_norm", "recon_error", "pred_probs", "pred_logits", "lens_probs"):
        put(key, getattr(base, key), "<f4")
    meta = {"L": base.n_layers, "P": base.n_tokens, "k": base.pred_ids.shape[1], "tokens": base.tokens,
            "logit_error": base.logit_error, "token_text": [[int(i), s] for i, s in base.token_text.items()],
            "model": base.model, "precision": base.precision,
            "generator": {"infoflow": infoflow.__version__, "engine": "test"}, "prompt": prompt, "variants": [],
            "heads": {"n_heads": base.heads.pattern.shape[1], "labels": base.heads.labels}}
    for key in ("write_norm", "write_proj", "pattern"):
        put(f"heads.{key}", getattr(base.heads, key), "<f4")
    put("lens_last.ids", base.lens_track_ids, "<i4")               # issue 24 item 6
    put("lens_last.probs", base.lens_track_probs, "<f4")
    put("lens_last.ranks", base.lens_track_ranks, "<i4")
    meta["lens_target"] = base.lens_target
    for name, label in (("tokens", "none (each token)"), ("words", "by words")):
        d = res[name]
        v = {"name": name, "label": label, "grouping": d.grouping, "sources": d.sources, "has_bias": d.has_bias,
             "groups": d.groups.tolist()}
        for key in ("attn_norm", "mlp_norm", "attn_delta_norm", "mlp_delta_norm", "attn_proj", "mlp_proj",
                    "logit_attr"):
            put(f"{name}.{key}", getattr(d, key), "<f4")
        put(f"{name}.logit_mean", d.logit_mean_last, "<f4")
        for key in ("norm", "proj"):
            put(f"heads.{name}.{key}", getattr(d.heads, key), "<f4")
        meta["variants"].append(v)
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    script = """
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [mod, dir] = process.argv.slice(1);
const { encodeDocument } = await import(pathToFileURL(mod).href);
const meta = JSON.parse(readFileSync(dir + "/meta.json"));
const arr = (name, T) => { const b = readFileSync(dir + "/" + name + ".bin"); return new T(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); };
const r = { ...meta, token_text: new Map(meta.token_text) };
for (const k of ["token_ids", "pred_ids", "lens_ids"]) r[k] = arr(k, Int32Array);
for (const k of ["embed_norm", "recon_error", "pred_probs", "pred_logits", "lens_probs"]) r[k] = arr(k, Float32Array);
r.variants = meta.variants.map((v) => {
  const o = { ...v, groups: Int32Array.from(v.groups) };
  for (const k of ["attn_norm", "mlp_norm", "attn_delta_norm", "mlp_delta_norm", "attn_proj", "mlp_proj", "logit_attr", "logit_mean"]) o[k] = arr(v.name + "." + k, Float32Array);
  return o;
});
r.lens_last = { ids: arr("lens_last.ids", Int32Array), probs: arr("lens_last.probs", Float32Array),
                ranks: arr("lens_last.ranks", Int32Array), target: meta.lens_target };
writeFileSync(dir + "/js.msgpack", await encodeDocument(r, meta.prompt));
const { encodeHeads } = await import(pathToFileURL(mod.replace(/encode[.]js$/, "encode-heads.js")).href);
r.heads = { ...meta.heads, variants: {} };
for (const k of ["write_norm", "write_proj", "pattern"]) r.heads[k] = arr("heads." + k, Float32Array);
for (const v of meta.variants) r.heads.variants[v.name] = { norm: arr(`heads.${v.name}.norm`, Float32Array), proj: arr(`heads.${v.name}.proj`, Float32Array) };
writeFileSync(dir + "/js.heads.msgpack", await encodeHeads(r, "js.msgpack"));
"""
    _node(script, str(LIVE_JS / "encode.js"), str(tmp_path))
    for variant in ("tokens", "words"):
        py, js = infoflow.load(tmp_path / "py.msgpack", variant), infoflow.load(tmp_path / "js.msgpack", variant)
        assert js.tokens == py.tokens and js.sources == py.sources and js.grouping == py.grouping
        for key in ("token_ids", "groups", "attn_norm", "mlp_norm", "attn_delta_norm", "mlp_delta_norm",
                    "attn_proj", "mlp_proj", "embed_norm", "pred_ids", "pred_probs", "pred_logits",
                    "logit_attr", "recon_error", "lens_ids", "lens_probs"):
            assert np.array_equal(getattr(js, key), getattr(py, key)), (variant, key)
        assert js.token_text == py.token_text and js.logit_error == py.logit_error
        for key in ("logit_mean_last", "lens_track_ids", "lens_track_probs", "lens_track_ranks"):
            assert np.array_equal(getattr(js, key), getattr(py, key)), (variant, key)
        assert js.lens_target == py.lens_target
        # the per-head file (encode-heads.js), found beside the main file as the live page saves it
        jh, ph = js.heads, py.heads
        assert jh.labels == ph.labels
        for key in ("norm", "proj", "write_norm", "write_proj", "pattern"):
            assert np.array_equal(getattr(jh, key), getattr(ph, key)), (variant, "heads", key)
    main_js = msgpack.unpackb((tmp_path / "js.msgpack").read_bytes(), raw=False)
    main_py = msgpack.unpackb((tmp_path / "py.msgpack").read_bytes(), raw=False)
    assert [k for k in main_js if k != "built"] == list(main_py)       # same keys, same order (py: page_bytes)
    assert [list(v) for v in main_js["variants"]] == [list(v) for v in main_py["variants"]]
    jdoc = msgpack.unpackb((tmp_path / "js.heads.msgpack").read_bytes(), raw=False)
    pdoc = msgpack.unpackb((tmp_path / "py.heads.msgpack").read_bytes(), raw=False)
    assert list(jdoc) == list(pdoc) and jdoc["main"] == "js.msgpack"        # same keys, same order


# ----------------------------------------------------------------------------- page: bad input


@pytest.mark.browser
def test_empty_and_over_limit_prompts_say_what_to_fix(context, live_server):
    page = _open_live(context.new_page(), live_server + "live/index.html")
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.click("#run")
    assert "empty" in page.text_content("#live-error")
    long_text = "word " * 80
    page.fill("#prompt", long_text)
    page.wait_for_function("() => Number(document.getElementById('token-count').dataset.count) > 64")
    n = int(page.get_attribute("#token-count", "data-count"))
    assert n > 64 and f"{n} / 64 tokens" in page.text_content("#token-count")
    page.click("#run")
    message = page.text_content("#live-error")
    assert f"{n} tokens" in message and "64" in message
    assert not [u for u in requested if "weights-" in u], "nothing is downloaded for a refused prompt"


@pytest.mark.browser
def test_shared_link_prefills_and_asks_before_downloading(context, live_server):
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    _open_live(page, live_server + "live/index.html#text=" + "Hello%20%3Cb%3Eworld%3C%2Fb%3E")
    assert page.input_value("#prompt") == "Hello <b>world</b>"
    assert page.is_visible("#link-notice")
    page.wait_for_timeout(500)
    assert not [u for u in requested if "weights-" in u]
    assert page.evaluate("() => document.querySelectorAll('#live b').length") == 0


@pytest.mark.browser
def test_history_to_another_prompt_fills_the_box_inertly(context, live_server):
    """Back/Forward to an entry of a prompt whose result the tab does not keep (here: a hostile
    one) puts its text in the box as text, asks for Run, and downloads nothing."""
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    _open_live(page, live_server + "live/index.html")
    hostile = '<img src=x onerror="window.pwned=1">&m=proj'
    page.evaluate("(t) => { location.hash = 'text=' + encodeURIComponent(t); }", hostile)
    page.wait_for_function("(t) => document.getElementById('prompt').value === t", arg=hostile)
    assert "press Run" in page.text_content("#live-status")
    assert page.evaluate("() => document.querySelectorAll('#live img').length") == 0
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.pwned") is None
    assert not [u for u in requested if "weights-" in u]


@pytest.mark.browser
def test_corrupt_chunk_is_refetched_once_then_named(context, live_server, manifest):
    chunk = manifest["chunks"][1]["file"]
    _Quiet.corrupt[chunk] = 0
    try:
        page = _open_live(context.new_page(), live_server + "live/index.html")
        page.fill("#prompt", "Hello there")
        page.click("#run")
        assert _wait_state(page, ["error", "done"]) == "error"
        message = page.text_content("#live-error")
        assert chunk in message and "corrupt" in message
        assert _Quiet.corrupt[chunk] == 2, "fetched once more, then reported"
        assert not page.is_disabled("#run")
    finally:
        del _Quiet.corrupt[chunk]


@pytest.mark.browser
def test_never_ending_chunk_fails_fast_at_its_declared_size(context, live_server, manifest):
    """Issue 26, item 7: a chunk served as a 200 response that never ends is cut off at the
    manifest's `bytes` (not buffered for ever), fetched once more, then named."""
    chunk = manifest["chunks"][1]["file"]
    _Quiet.endless[chunk] = 0
    try:
        page = _open_live(context.new_page(), live_server + "live/index.html")
        page.fill("#prompt", "Hello there")
        page.click("#run")
        assert _wait_state(page, ["error", "done"], timeout=40_000) == "error"
        message = page.text_content("#live-error")
        assert chunk in message and "larger than" in message, message
        assert _Quiet.endless[chunk] == 2, "fetched once more, then reported"
        assert not page.is_disabled("#run")
    finally:
        del _Quiet.endless[chunk]


def _edited_json(route, edit):
    """Serve the real file with `edit` applied to its JSON (same URL, same name)."""
    body = json.loads(route.fetch().body())
    edit(body)
    route.fulfill(status=200, content_type="application/json", body=json.dumps(body))


@pytest.mark.browser
def test_edited_manifest_config_is_refused(context, live_server):
    """Issue 26, item 9: a manifest whose config was edited no longer has the content hash in
    its file name; the page refuses it before downloading any weights."""
    context.route("**/live/model/manifest.*.json", lambda route: _edited_json(
        route, lambda m: m["config"].update(layers=1, rms_norm_eps=0.5, rope_theta=1.0)))
    requested = []
    context.on("request", lambda r: requested.append(r.url))
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", "Hello there")
    page.click("#run")
    assert _wait_state(page, ["error", "done"], timeout=60_000) == "error"
    message = page.text_content("#live-error")
    assert "manifest" in message and "content hash" in message, message
    assert not [u for u in requested if "weights-" in u], "no weights fetched for a refused manifest"


@pytest.mark.browser
def test_edited_tokenizer_is_refused(context, live_server):
    """Issue 26, item 9: a tokenizer whose bytes are not the manifest's sha256 is refused."""
    def swap_two_tokens(tok):
        vocab = tok["model"]["vocab"]
        a, b = "Hello", "Ġthere"
        vocab[a], vocab[b] = vocab[b], vocab[a]

    context.route("**/live/model/tokenizer.*.json", lambda route: _edited_json(route, swap_two_tokens))
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", "Hello there")
    page.click("#run")
    assert _wait_state(page, ["error", "done"], timeout=120_000) == "error"
    message = page.text_content("#live-error")
    assert "tokenizer" in message and "sha256" in message, message


@pytest.mark.browser
def test_double_cancel_does_not_cancel_the_next_run(context, live_server):
    """Issue 26, item 8: Run, a double-click on Cancel, Run again: the second run is not
    cancelled by the first click's watchdog (1.5 s after it). Cancelled while downloading, so the
    worker answers at once; every chunk takes 1 s to start, so the second run (downloading the
    model again) is still going when that watchdog would fire."""
    _Quiet.delay = 1.0
    try:
        page = _open_live(context.new_page(), live_server + "live/index.html")
        page.fill("#prompt", "Hello there")
        page.click("#run")
        page.wait_for_function("() => document.documentElement.dataset.liveState === 'loading'")
        page.wait_for_timeout(200)
        # both clicks in one task, as a double-click lands before the worker can answer the first
        page.evaluate("() => { const b = document.getElementById('cancel'); b.click(); b.click(); }")
        assert _wait_state(page, ["cancelled", "error", "done"]) == "cancelled"
        page.evaluate("() => { window.states = []; new MutationObserver(() => window.states.push("
                      "document.documentElement.dataset.liveState)).observe(document.documentElement, "
                      "{attributes: true, attributeFilter: ['data-live-state']}); }")
        page.click("#run")
        assert _wait_state(page, ["cancelled", "error", "done"], timeout=180_000) == "done", \
            page.text_content("#live-status")
        states = page.evaluate("() => window.states")
        assert "cancelled" not in states and "running" in states, states
    finally:
        _Quiet.delay = 0.0


@pytest.mark.browser
def test_network_error_is_retried_and_cached_chunks_are_reused(context, live_server, manifest):
    """A dropped connection is retried; a second visit downloads no chunk at all."""
    chunk = manifest["chunks"][2]["file"]
    state = {"failed": 0, "served": []}

    def flaky(route):
        if state["failed"] < 2:
            state["failed"] += 1
            route.abort("connectionreset")
        else:
            route.continue_()

    context.route(f"**/{chunk}", flaky)
    context.on("request", lambda r: "weights-" in r.url and state["served"].append(r.url.rsplit("/", 1)[-1]))
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", "Hello there")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('download-bar').value >= "
                           f"{manifest['total_bytes']}", timeout=120_000)
    assert state["failed"] == 2 and state["served"].count(chunk) == 3
    _wait_state(page, ["error", "done"])
    page.close()

    state["served"].clear()
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", "Hello again, " * 20)         # ~60 tokens: the engine takes long enough to cancel
    page.click("#run")
    page.wait_for_function("() => document.getElementById('download-bar').value >= "
                           f"{manifest['total_bytes']}", timeout=60_000)
    assert state["served"] == [], "the second visit reads every chunk from the Cache Storage"
    assert "cache" in page.text_content("#download-label")
    # Cancel while the engine works through the layers
    page.wait_for_function("() => document.getElementById('layer-bar').value >= 1", timeout=120_000)
    page.click("#cancel")
    assert _wait_state(page, ["cancelled", "error", "done"]) == "cancelled"
    assert page.is_hidden("#live-error") and not page.is_disabled("#run")
    assert page.is_hidden("#live-result"), "a cancelled run shows no result"


@pytest.mark.browser
def test_cancel_mid_download_stops_cleanly(context, live_server):
    def slow(route):
        import time
        time.sleep(0.4)
        route.continue_()

    context.route("**/weights-*.chunk", slow)
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", "Hello there")
    page.click("#run")
    page.wait_for_function("() => document.documentElement.dataset.liveState === 'loading'")
    page.click("#cancel")
    assert _wait_state(page, ["cancelled", "error", "done"]) == "cancelled"
    assert "Cancelled" in page.text_content("#live-status")
    assert page.is_hidden("#cancel") and not page.is_disabled("#run")
    assert page.is_hidden("#live-error")


@pytest.mark.browser
def test_no_webassembly_says_so(context, live_server):
    context.add_init_script("delete globalThis.WebAssembly")
    page = _open_live(context.new_page(), live_server + "live/index.html")
    assert page.evaluate("() => document.documentElement.dataset.liveState") == "unsupported"
    assert "WebAssembly" in page.text_content("#live-error")
    assert page.is_disabled("#run")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.browser
def test_real_model_end_to_end_matches_python(context, live_server, default_model, tmp_path):
    """A short prompt decomposed in the browser; the downloaded data file against infoflow.decompose."""
    import infoflow
    from infoflow.datafile import encode
    from infoflow.decompose import decompose_variants
    text = "The capital of France is"
    page = _open_live(context.new_page(), live_server + "live/index.html")
    page.fill("#prompt", text)
    page.click("#run")
    page.wait_for_function("() => document.documentElement.dataset.liveState === 'running' || "
                           "document.documentElement.dataset.liveState === 'error'", timeout=120_000)
    if SHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "live-running.png"))
    state = _wait_state(page, ["error", "done"])
    assert state == "done", page.text_content("#live-error")
    with page.expect_download() as dl:
        page.click("#download-data")
    path = tmp_path / "live.msgpack"
    dl.value.save_as(path)

    london = default_model.tokenizer.encode(" London", add_special_tokens=False)[0]
    py = decompose_variants(text, default_model, {"tokens": None, "words": "words"}, lens_target=london)
    (tmp_path / "py.msgpack").write_bytes(encode(py, {"id": "live", "title": "", "text": text, "tags": [],
                                                      "note": None, "chat": False}))
    for variant in ("tokens", "words"):
        js = infoflow.load(path, variant)
        ref = infoflow.load(tmp_path / "py.msgpack", variant)      # Python's numbers at the file's precision
        exact = py[variant]
        assert js.token_ids.tolist() == exact.token_ids.tolist()
        assert js.tokens == exact.tokens and js.sources == exact.sources
        assert [js.token_text[i] for i in js.pred_ids[:, 0]] == [exact.token_text[i] for i in exact.pred_ids[:, 0]]
        for key in ("attn_norm", "mlp_norm", "attn_delta_norm", "mlp_delta_norm"):
            a, b = getattr(js, key), getattr(ref, key)
            scale = np.abs(getattr(exact, key)).max(-1, keepdims=True)       # (L, P, 1) one quantization step
            assert np.all(np.abs(a - b) <= scale / 255 * (1 + 1e-6) + 1e-4 * np.abs(b)), key
        assert np.allclose(js.embed_norm, exact.embed_norm, rtol=1e-4, atol=0)
        assert js.worst_recon_error <= 1e-5
        assert js.recon_error.shape == (exact.n_layers, 2)
        # issue 24 items 5, 6: the vocabulary mean's parts, the last position's lens (unquantized)
        assert np.abs(js.logit_mean_last - exact.logit_mean_last).max() <= 1e-4 * np.abs(exact.pred_logits).max()
        k = exact.pred_ids.shape[1]
        assert js.lens_target is None and [js.token_text[i] for i in js.lens_track_ids] == \
            [exact.token_text[i] for i in exact.lens_track_ids[:k]]
        assert np.abs(js.lens_track_probs - exact.lens_track_probs[:k]).max() <= 1e-4
        assert (js.lens_track_ranks == exact.lens_track_ranks[:k]).all()
    assert page.evaluate("() => window.infoflowLive.D.P") == len(py["tokens"].tokens)

    # the lens overview's "any token" box: the worker computes " London" from the run's residuals
    if page.is_visible("#first-hint"):
        page.click("#first-hint-close")
    page.fill("#lens-chart input.lens-any", "\u2423London")
    page.click("#lens-chart button.lens-any-go")
    page.wait_for_function("() => { const c = document.querySelector('#lens-chart canvas'); "
                           "return c && c.lensDrawn && c.lensDrawn.token === ' London'; }", timeout=60_000)
    drawn = page.evaluate("document.querySelector('#lens-chart canvas').lensDrawn.points")
    row = py["tokens"].lens_target
    want_p, want_r = py["tokens"].lens_track_probs[row].reshape(-1), py["tokens"].lens_track_ranks[row].reshape(-1)
    assert max(abs(pt["prob"] - p) for pt, p in zip(drawn, want_p)) <= 1e-4
    assert [pt["rank"] for pt in drawn] == want_r.tolist()
    assert "(computed here)" in page.inner_text("#lens-chart select.lens-pick")
    page.fill("#lens-chart input.lens-any", " Londonderryville")
    page.click("#lens-chart button.lens-any-go")
    page.wait_for_function("() => /tokens on this model/.test(document.querySelector('#lens-chart .lens-any-note').textContent)")

    # per-head data: the "Heads file" download, read by infoflow.load(...).heads beside the main file
    with page.expect_download() as dl:
        page.click("#download-heads")
    assert dl.value.suggested_filename == "live.heads.msgpack"
    dl.value.save_as(tmp_path / "live.heads.msgpack")
    for variant in ("tokens", "words"):
        jh, exact = infoflow.load(path, variant).heads, py[variant].heads
        assert jh.labels == exact.labels
        for key in ("norm", "write_norm", "pattern"):
            a, b = getattr(jh, key).astype(np.float64), getattr(exact, key).astype(np.float64)
            step = np.abs(b).max(-1, keepdims=True) / 255 if key != "write_norm" else 0
            assert np.all(np.abs(a - b) <= step * (1 + 1e-6) + 1e-4 * np.abs(b) + 1e-7), (variant, key)
        step = np.abs(exact.proj).max(-1, keepdims=True) / 127
        assert np.all(np.abs(jh.proj - exact.proj) <= step + 1e-4), variant
    # the viewer takes them from the computed result: a pinned attention cell shows every head
    L, Hx, P = py["tokens"].heads.write_norm.shape
    page.evaluate(f"() => window.infoflowViewer.viewer.set({{pin: {{l: {L - 8}, k: 0, p: {P - 1}}}}})")
    page.wait_for_selector("#heads table.heads-map td")
    assert page.eval_on_selector_all("#heads table.heads-map tr[data-head]", "rs => rs.length") == Hx
    assert page.evaluate("() => window.infoflowViewer.viewer.headState.HD === window.infoflowLive.D.heads")

    # the attribution graph of the same prompt (worker "graph", engine-graph.js), from the run's
    # kept state: no new decomposition; T is the real logit difference, the embeddings sum to it
    first, second = (int(i) for i in py["tokens"].pred_ids[-1, :2])
    graph = """async (t) => { const r = await window.infoflowLive.graph(t); const g = r.graph;
      return {value: g.value, frozen: g.frozen_value, completeness: g.completeness, rerun: r.rerun,
              embed: Array.from(g.embed.data), target: g.target.id, n: g.nodes.kind.data.length,
              edges: g.edges.src.data.length, ms: g.timings.graph_ms}; }"""
    out = page.evaluate(graph, {"target": first, "contrast": second, "position": -1})
    want = float(py["tokens"].pred_logits[-1, 0] - py["tokens"].pred_logits[-1, 1])
    assert not out["rerun"] and out["target"] == first
    assert abs(out["value"] - want) <= 1e-4 * abs(want) + 1e-5, (out["value"], want)
    assert abs(sum(out["embed"]) - out["frozen"]) <= 1e-4 * abs(out["frozen"])
    assert abs(out["frozen"] - out["value"]) <= 1e-3 * abs(out["value"])
    assert 0 < out["completeness"] < 2 and out["n"] > 1 and out["edges"] > 0
    demeaned = page.evaluate(graph, {"target": None, "contrast": None, "position": -1})
    assert not demeaned["rerun"] and demeaned["target"] == first          # None: the top prediction
    err = page.evaluate("""async () => { try { await window.infoflowLive.graph({target: " Parisville"}); }
                           catch (e) { return e.message; } return null; }""")
    assert err and "tokens on this model" in err, err
    print(f"\nlive graph: {out['n']} nodes, {out['edges']} edges, {out['ms']:.0f} ms, then {demeaned['ms']:.0f} ms")


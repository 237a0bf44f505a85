"""`infoflow build` on a small gallery with the real default model."""
import json
import re
import shutil

import numpy as np
import pytest

import infoflow
from infoflow.build import build
from infoflow.config import SiteConfig
from infoflow.datafile import DataFileError
from infoflow.prompts import add_prompt

from .conftest import HOSTILE_TEXT, HOSTILE_TITLE, sharing_cache


def test_files_and_manifest(gallery):
    site, summary = gallery["site"], gallery["summary"]
    assert sorted(summary.computed) == ["capital", "hostile", "ioi"] and summary.model_loaded
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    ids = [e["id"] for e in manifest["prompts"]]
    assert ids == ["capital", "ioi", "hostile"]                     # prompts-file order
    for e in manifest["prompts"]:
        assert re.fullmatch(rf"data/{e['id']}\.[0-9a-f]{{12}}\.msgpack", e["data"])
        assert (site / e["data"]).is_file() and (site / e["page"]).is_file()
        assert (site / e["thumb"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert e["worst_recon_error"] < 1e-4
    capital = manifest["prompts"][0]
    assert capital["top_prediction"] == " Paris" and capital["n_tokens"] == 5
    assert (site / "index.html").is_file() and (site / "static").is_dir()
    assert "␣Paris" in (site / "index.html").read_text()     # a space shown as ␣, as in the viewer
    hostile = manifest["prompts"][2]
    assert hostile["title"] == HOSTILE_TITLE and hostile["text"] == HOSTILE_TEXT


def test_load_matches_engine(gallery, default_model):
    site = gallery["site"]
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    entry = next(e for e in manifest["prompts"] if e["id"] == "ioi")
    loaded = infoflow.load(site / entry["data"])
    fresh = infoflow.decompose(entry["text"], default_model)
    assert loaded.tokens == fresh.tokens and loaded.sources == fresh.sources
    # Norms and shares are stored as 8-bit fractions of each cell's largest value.
    for name in ("attn_norm", "mlp_norm", "attn_delta_norm", "mlp_delta_norm", "attn_proj", "mlp_proj"):
        ours, ref = getattr(loaded, name), getattr(fresh, name)
        step = np.abs(ref).max(-1, keepdims=True) / (127 if name.endswith("proj") else 255)
        assert np.all(np.abs(ours - ref) <= 0.5 * step + 1e-6), name
    assert np.allclose(loaded.logit_attr, fresh.logit_attr, rtol=2e-3, atol=2e-2)   # float16
    assert np.allclose(loaded.pred_probs, fresh.pred_probs, atol=1e-6)
    assert np.allclose(loaded.lens_probs, fresh.lens_probs, atol=1e-3)                # float16
    assert [loaded.token_text[i] for i in loaded.lens_ids[-1, 1, -1]] == \
           [fresh.token_text[i] for i in fresh.lens_ids[-1, 1, -1]]
    assert np.allclose(loaded.recon_error, fresh.recon_error, rtol=1e-5, atol=1e-9)
    capital = next(e for e in manifest["prompts"] if e["id"] == "capital")
    declared = infoflow.load(site / capital["data"], variant="prompt")
    assert declared.sources[0] == "The capital of" and declared.grouping == "custom"


def test_second_build_computes_nothing(gallery, tmp_path):
    cfg = gallery["cfg"]
    again = build(SiteConfig(prompts=cfg.prompts, out=tmp_path / "site", cache=cfg.cache), progress=False)
    assert again.computed == [] and sorted(again.reused) == ["capital", "hostile", "ioi"]
    assert not again.model_loaded
    first = sorted(p.name for p in (gallery["site"] / "data").iterdir())
    assert sorted(p.name for p in (tmp_path / "site" / "data").iterdir()) == first   # same bytes, same names


def test_adding_a_prompt_recomputes_only_it(gallery, tmp_path):
    cfg = gallery["cfg"]
    prompts = tmp_path / "prompts.toml"
    shutil.copy(cfg.prompts, prompts)
    before = prompts.read_text()
    add_prompt(prompts, text="One, two, three,", title="Counting", tags=["lists"])
    assert prompts.read_text().startswith(before.rstrip("\n"))                 # comments, layout kept
    summary = build(SiteConfig(prompts=prompts, out=tmp_path / "site", cache=cfg.cache), progress=False)
    assert summary.computed == ["counting"] and len(summary.reused) == 3


URL_ATTR = re.compile(r"""(?:href|src|action|content)\s*=\s*["']([^"']*)["']""", re.I)


def test_pages_are_self_contained(gallery_site):
    pages = list(gallery_site.rglob("*.html"))
    assert len(pages) == 6      # index, about, 3 prompts, live/index.html
    for page in pages:
        html = page.read_text()
        for url in URL_ATTR.findall(html):
            if url.startswith(("default-src", "width=")):
                continue   # the CSP and viewport metas
            assert "//" not in url and not url.startswith("/"), (page.name, url)
        assert not re.search(r"https?://", html), page.name
    for asset in list(gallery_site.rglob("*.css")) + list(gallery_site.rglob("*.js")) + list(gallery_site.rglob("*.mjs")):
        text = asset.read_text()
        # no fetches or imports from other hosts (licence comments may name a URL)
        assert not re.search(r"""(?:import|from|fetch\(|url\()\s*["']?(?:https?:)?//""", text), asset


def test_corrupt_data_file_is_reported(tmp_path, gallery_site):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x93\x01garbage")
    with pytest.raises(DataFileError):
        infoflow.load(bad)
    with pytest.raises(DataFileError, match="no such"):
        infoflow.load(tmp_path / "missing.msgpack")


def test_two_shards_and_merge_equal_single_build(gallery, tiny_model_folder, tmp_path):
    # On a tiny model: what is tested is how shards split, cache and merge the work, and the
    # real model's three prompts, with their graphs and ablation checks, would cost minutes
    from infoflow.build import merge_shards
    cfg = gallery["cfg"]

    def config(out, cache):
        return SiteConfig(prompts=cfg.prompts, out=out, cache=str(cache), model=str(tiny_model_folder), live=False)
    build(config(tmp_path / "single", sharing_cache(tmp_path / "single-cache", cfg.cache)), progress=False)
    caches = []
    for i in range(2):
        cache = sharing_cache(tmp_path / f"shard{i}", cfg.cache)
        summary = build(config(tmp_path / "unused", cache), shard=(i, 2), progress=False)
        assert len(summary.computed) == (2 if i == 0 else 1)
        caches.append(cache)
    assert not (tmp_path / "unused").exists()                    # shards write no site
    merged = sharing_cache(tmp_path / "merged", cfg.cache)
    summary = merge_shards(caches, config(tmp_path / "site", merged), progress=False)
    assert summary.computed == [] and not summary.model_loaded
    single = {p.relative_to(tmp_path / "single"): p.read_bytes() for p in (tmp_path / "single" / "data").rglob("*.msgpack")}
    sharded = {p.relative_to(tmp_path / "site"): p.read_bytes() for p in (tmp_path / "site" / "data").rglob("*.msgpack")}
    assert single == sharded and len(single) == 3 + 3 + 3       # main, heads and graph files


def test_serve_serves_the_site_on_localhost(gallery_site):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "infoflow.cli", "serve", "--no-build", "--out",
                             str(gallery_site), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.time() + 30, None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read()
            except OSError:
                time.sleep(0.2)
        assert body is not None and b"infoflow gallery" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)

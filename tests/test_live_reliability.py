"""Issue 26, item 10 (and 9's Python side): the live export in the cache is checked, copied, and
cleaned up after a kill.

Each test works on a private cache: the converted model is shared (a symlink), the export is a
copy of the shared one, so corrupting it here never touches another test's or user's cache.
The browser-side items (7, 8, 9) are in tests/test_live.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infoflow import live
from infoflow.model import cache_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_export() -> Path:
    """The default model's export in the shared cache (made once, ~12 s)."""
    folder = live.cached_export()
    _MODEL.update(json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["model"], label="SmolLM2")
    return folder


def _cache_without_export(root: Path) -> Path:
    (root / "live").mkdir(parents=True)
    (root / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    return root


@pytest.fixture
def private_cache(tmp_path, shared_export) -> Path:
    """A cache of our own: the shared converted model, a copy of the shared export."""
    root = _cache_without_export(tmp_path / "cache")
    shutil.copytree(shared_export, root / "live" / shared_export.name)
    return root


def _cached(root: Path) -> tuple[Path, dict]:
    folder, = [p for p in (root / "live").iterdir() if (p / "manifest.json").exists()]
    return folder, json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


_MODEL: dict = {}     # the site's `model` map, for the live page's template (shared_export)


def _export(site: Path, cache: Path) -> tuple[str | None, list[str]]:
    said: list[str] = []
    info = {"title": "infoflow gallery", "version": "test", "built": "", "model": _MODEL}
    page = live.export_live_model(site, info, cache=cache, log=said.append)
    return page, said


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _site_is_intact(site: Path, manifest: dict) -> None:
    model = site / "live" / "model"
    for c in manifest["chunks"]:
        assert _sha(model / c["file"]) == c["sha256"], f"{c['file']} shipped corrupt"
    assert _sha(model / manifest["tokenizer"]["file"]) == manifest["tokenizer"]["sha256"]


# ----------------------------------------------------------------------------- verify on reuse


def test_corrupt_cached_chunk_is_exported_again(private_cache, tmp_path):
    folder, manifest = _cached(private_cache)
    victim = folder / manifest["chunks"][1]["file"]
    body = bytearray(victim.read_bytes())
    body[1000] ^= 0xFF
    victim.write_bytes(body)
    page, said = _export(tmp_path / "site", private_cache)
    assert page == "live/index.html"
    _site_is_intact(tmp_path / "site", manifest)
    assert any(victim.name in line and "again" in line for line in said), said
    assert _sha(victim) == manifest["chunks"][1]["sha256"], "the cache is repaired too"


def test_missing_cached_chunk_is_exported_again(private_cache, tmp_path):
    folder, manifest = _cached(private_cache)
    (folder / manifest["chunks"][0]["file"]).unlink()
    (folder / manifest["tokenizer"]["file"]).unlink()
    page, said = _export(tmp_path / "site", private_cache)
    assert page == "live/index.html"
    _site_is_intact(tmp_path / "site", manifest)
    assert any("missing" in line for line in said), said


def test_unreadable_cached_manifest_counts_as_damaged(private_cache):
    folder, _ = _cached(private_cache)
    assert live.export_problem(folder) is None
    (folder / "manifest.json").write_text('{"format": "infoflow-live", "chunks": [', encoding="utf-8")
    assert "unreadable" in live.export_problem(folder)
    (folder / "manifest.json").unlink()
    assert "missing" in live.export_problem(folder)


# ----------------------------------------------------------------------------- copies, not links


def test_site_chunks_are_copies_not_links_to_the_cache(private_cache, tmp_path):
    folder, manifest = _cached(private_cache)
    _export(tmp_path / "site", private_cache)
    model = tmp_path / "site" / "live" / "model"
    for c in manifest["chunks"]:
        shipped, cached = model / c["file"], folder / c["file"]
        assert shipped.stat().st_nlink == 1 and not os.path.samefile(shipped, cached), c["file"]
    # corrupt the cache in place (as a disk error or a stray write would): the site is unchanged
    victim = folder / manifest["chunks"][2]["file"]
    with open(victim, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 64)
    _site_is_intact(tmp_path / "site", manifest)


# ----------------------------------------------------------------------------- a killed export


KILLED_EXPORT = """
import os, signal, sys
import gguf
import infoflow.live as live

def killed(reader, folder, target):          # half an export written, then kill -9
    (target / "weights-00.0123456789ab.chunk").write_bytes(b"\\0" * (1 << 20))
    os.kill(os.getpid(), signal.SIGKILL)

gguf.GGUFReader = lambda path: None          # no need to parse the real GGUF to be killed
live.check_size = lambda reader: 0
live._build_export = killed
live.cached_export(sys.argv[1])
"""


def test_killed_export_folder_is_removed_by_the_next_export(tmp_path, shared_export):
    cache = _cache_without_export(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(cache)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]
    left = list((cache / "live").glob(".export-*"))
    assert len(left) == 1 and any(left[0].iterdir()), "the kill left its half-written export behind"
    mine = cache / "live" / ".export-mine"           # a folder of the user's: not ours to delete
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    shutil.copytree(shared_export, cache / "live" / shared_export.name)

    page, said = _export(tmp_path / "site", cache)
    assert page == "live/index.html"
    assert not left[0].exists(), "the killed export's folder is removed"
    assert (mine / "notes.txt").read_text() == "keep me"
    assert any(str(mine) in line for line in said), f"the user's folder is named in a warning: {said}"


# ----------------------------------------------------------------------------- item 9, Python side


def test_edited_site_manifest_is_refused_when_read_back(private_cache, tmp_path):
    """A site's manifest.<hash>.json whose body no longer has that hash (an edited config)."""
    _export(tmp_path / "site", private_cache)
    model = tmp_path / "site" / "live" / "model"
    path, = model.glob("manifest.*.json")
    m = json.loads(path.read_text(encoding="utf-8"))
    m["config"].update(layers=1, rms_norm_eps=0.5, rope_theta=1.0)
    path.write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(live.LiveExportError, match="content hash"):
        live.read_manifest(model)

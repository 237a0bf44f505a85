"""Issue 24, item 11: the live page credits only the model it runs, and the gallery's
"Recompute exactly in your browser" states the download before it starts."""
from __future__ import annotations

import json

import pytest

from infoflow.site import render_live
from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

SMOL = {"key": "SmolLM2-135M-Instruct", "id": "HuggingFaceTB/SmolLM2-135M-Instruct", "fingerprint": "aaa", "dtype": "float32",
        "layers": 30, "d_model": 576, "heads": 9, "credit": "SmolLM2 credit line"}
GEMMA = {"key": "gemma3-270m", "id": "google/gemma-3-270m", "fingerprint": "bbb", "dtype": "float32",
         "layers": 18, "d_model": 640, "heads": 4, "credit": "Gemma credit line"}


def test_live_page_credits_only_the_model_it_runs(tmp_path):
    site = {"title": "t", "version": "0", "built": "", "models": [SMOL, GEMMA], "model": SMOL}
    render_live(tmp_path, site, manifest="model/m.json", total_mb=97.2, config={}, has_chat=True,
                model_key="SmolLM2-135M-Instruct")
    footer = (tmp_path / "live" / "index.html").read_text(encoding="utf-8").split("site-footer")[1]
    assert "SmolLM2 credit line" in footer and "HuggingFaceTB/SmolLM2-135M-Instruct" in footer
    assert "Gemma credit line" not in footer and "gemma-3-270m" not in footer


@pytest.mark.browser
def test_recompute_button_states_the_download(gallery_site, site_server, page, pages):  # noqa: F811
    manifest = next((gallery_site / "live" / "model").glob("manifest*.json"))
    mb = round(json.loads(manifest.read_text())["total_bytes"] / 1e6)
    assert 50 < mb < 200
    _open_viewer(page, site_server + pages["ioi"] + "#g=custom")
    assert page.is_visible("#group-exact")
    assert page.inner_text("#group-exact") == f"Recompute exactly in your browser (downloads the model once: {mb} MB)"

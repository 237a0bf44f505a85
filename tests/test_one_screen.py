"""Issue 24, item 3: at 1280 x 800 the IOI page's grid and depth chart are on screen without
scrolling, on a 30-layer model and an 18-layer one, with readable rows (none under grid.js's
MIN_LAYER_PX split: 4 CSS px) labelled at least every 5 layers; the depth chart's hover and
keyboard readouts print the stored values.

The site: the gallery's real IOI entry (title, tags, both notes: the page's head is as tall as the
published one) on the real SmolLM2 (30 layers; its result is the test gallery's, from the shared
cache) and on a tiny random Gemma 3 of 18 layers named like the gallery's second model, so the
page has the model switch and the tokenization note of a two-model gallery.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.test_browser import _open_viewer, _serve, browser  # noqa: F401  (fixtures)
from tests.test_depth_chart import SERIES, _arrival
from tests.test_two_models import bpe_tokenizer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
MIN_ROW_PX = 4          # grid.js: MIN_LAYER_PX (10) split 60 / 40
GEMMA = "tiny-gemma-18"


def _ioi_entry() -> dict:
    gallery = tomllib.loads((ROOT / "prompts" / "gallery.toml").read_text(encoding="utf-8"))
    return next(p for p in gallery["prompt"] if p["id"] == "ioi-mary-john")


@pytest.fixture(scope="module")
def screen_site(gallery, test_cache, tmp_path_factory):  # noqa: ARG001  (gallery: the IOI result in the cache)
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from infoflow.build import build
    from infoflow.config import SiteConfig
    from infoflow.model import DEFAULT_MODEL

    import json
    import torch

    root = tmp_path_factory.mktemp("one-screen")
    torch.manual_seed(0)
    bpe = bpe_tokenizer()
    gemma = root / GEMMA
    Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=48, num_hidden_layers=18,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
                                       query_pre_attn_scalar=16, max_position_embeddings=128,
                                       layer_types=["sliding_attention", "full_attention"] * 9)).save_pretrained(gemma)
    bpe.save_pretrained(gemma)
    e = _ioi_entry()
    # the published page's head: its title, tags and notes; no target (no graph to compute)
    toml = (f'[[prompt]]\nid = "ioi"\ntitle = {json.dumps(e["title"])}\ntext = {json.dumps(e["text"])}\n'
            f'tags = {json.dumps(e["tags"])}\nnote = {json.dumps(e["note"])}\n'
            f'notes = {{ {GEMMA} = {json.dumps(e["notes"]["gemma3-270m"])} }}\n')
    (root / "prompts.toml").write_text(toml, encoding="utf-8")
    cfg = SiteConfig(prompts=root / "prompts.toml", out=root / "site", cache=str(test_cache),
                     models=(DEFAULT_MODEL, str(gemma)), live=True)    # the published head has the live link
    build(cfg, progress=False, log=lambda *a: None)
    srv, url = _serve(root / "site")
    yield url
    srv.shutdown()
    srv.server_close()


def _within(box, w=1280, h=800):
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= w and box["y"] + box["height"] <= h


@pytest.mark.parametrize("query, layers", [("", 30), (f"?model={GEMMA}", 18)])
def test_grid_and_depth_chart_fit_one_screen(screen_site, browser, query, layers):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        pg = ctx.new_page()
        _open_viewer(pg, screen_site + "p/ioi.html" + query)
        pg.wait_for_function("() => window.infoflowViewer.idle")
        L, P = pg.evaluate("[window.infoflowViewer.viewer.D.L, window.infoflowViewer.viewer.D.P]")
        assert L == layers
        assert pg.evaluate("window.scrollY") == 0
        assert pg.is_visible("#model-switch") and pg.is_visible(".prompt-note:not([hidden])")
        grid, chart = pg.locator("#grid").bounding_box(), pg.locator("#depth-chart svg").bounding_box()
        assert _within(grid), grid
        assert _within(chart), chart
        rows = pg.evaluate("Array.from(window.infoflowViewer.viewer.grid.rowH)")
        assert len(rows) == 2 * L and min(rows) >= MIN_ROW_PX - 1e-6, min(rows)
        # row labels: every fifth layer's attention row, at least
        labelled = set(pg.evaluate("window.infoflowViewer.viewer.grid.labelledRows"))
        assert {2 * l for l in range(0, L, 5)} <= labelled, sorted(labelled)
        # the depth chart's hover readout: the stored share of the charted source
        src = pg.evaluate("window.infoflowViewer.viewer.answerSources[0]")
        series = pg.evaluate(SERIES, [src, P - 1])
        l, k = _arrival(series)
        assert pg.inner_text("#depth-chart .depth-arrival").startswith(f"arrives at layer {l} ({'MLP' if k else 'attention'})")
        for i in (0, 2 * l + k, 2 * L - 1):
            lay, kk, x = series[i]
            xs = 40 + ((lay + (1 if kk else 0.5)) / L) * (260 - 50)            # depth.js margins, viewBox units
            pg.mouse.move(chart["x"] + xs * chart["width"] / 260, chart["y"] + chart["height"] / 2)
            assert pg.inner_text("#depth-chart .depth-readout") == \
                f"Layer {lay} {'MLP' if kk else 'attention'}: {x * 100:.1f}%"
        # and from the keyboard: focus, then the arrows step one sublayer at a time
        pg.focus("#depth-chart svg")
        pg.keyboard.press("End")
        pg.keyboard.press("ArrowLeft")
        lay, kk, x = series[-2]
        assert pg.inner_text("#depth-chart .depth-readout") == f"Layer {lay} {'MLP' if kk else 'attention'}: {x * 100:.1f}%"
    finally:
        ctx.close()

"""Issue 24, item 7: the method page, linked from every page, with a worked example whose numbers
are the gallery's data; and the prompt pages' first-visit hint, which stays closed once closed."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import infoflow
from tests.test_browser import _new_page, _open_viewer, browser, pages, site_server  # noqa: F401  (fixtures)


def test_every_page_links_the_method_page(gallery_site):
    html = sorted(gallery_site.rglob("*.html"))
    assert len(html) >= 5 and (gallery_site / "about.html") in html
    for f in html:
        text = f.read_text(encoding="utf-8")
        root = "../" * (len(f.relative_to(gallery_site).parts) - 1)
        assert f'class="about-link" href="{root}about.html"' in text, f


def test_method_page_explains_and_its_example_is_the_data(gallery_site):
    text = (gallery_site / "about.html").read_text(encoding="utf-8")
    for words in ["frozen", "attention pattern", "does not show", "sink", "8 bits", "How to cite",
                  "signed projection share", "logit attribution"]:
        assert words in text, words
    entry = next(e for e in json.loads((gallery_site / "data" / "manifest.json").read_text())["prompts"] if e["id"] == "ioi")
    assert f'href="{entry["page"]}"' in text                        # the example is the gallery's IOI page
    d = infoflow.load(gallery_site / entry["data"], "words")
    P, groups = d.n_tokens, np.asarray(d.groups)
    attr = d.logit_attr[P - 1, 0].astype(np.float64).copy()
    attr[groups[0]] = attr[groups[P - 1]] = -np.inf
    answer = int(np.argmax(attr))
    last = d.mlp_norm[-1, P - 1].astype(np.float64)
    assert d.sources[answer] == " Mary"
    assert f"{100 * last[answer] / last.sum():.1f} %" in text       # its share of the whole residual
    assert f"{100 * last[groups[0]] / last.sum():.1f} %" in text    # the first token's share
    assert f"{100 * last[answer] / (last.sum() - last[groups[0]]):.1f} %" in text   # "of the sources shown"
    assert f"{d.logit_attr[P - 1, 0, answer]:+.2f}" in text


def test_first_visit_hint_closes_and_stays_closed(browser, site_server, pages):  # noqa: F811
    url = site_server + pages["ioi"]
    ctx, pg = _new_page(browser)
    try:
        _open_viewer(pg, url)
        assert pg.is_visible("#first-hint") and "How it works" in pg.inner_text("#first-hint")
        pg.click("#first-hint-close")
        assert not pg.is_visible("#first-hint")
        _open_viewer(pg, site_server + pages["capital"])          # another prompt page, same browser
        assert not pg.is_visible("#first-hint")
        assert not pg.errors, pg.errors
    finally:
        ctx.close()
    ctx, pg = _new_page(browser)                                  # a new visitor sees it
    try:
        _open_viewer(pg, url)
        assert pg.is_visible("#first-hint")
    finally:
        ctx.close()

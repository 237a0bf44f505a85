"""Issue 24, item 2: a prompt's note fits the model it is shown with.

`notes = { model = "..." }` beside `note` gives a model its own note; the build refuses a note
that names a layer or head the model lacks (one line naming the prompt and the model); and
`?model=X` on a prompt not built on X says so.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from infoflow.build import BuildError, build
from infoflow.config import SiteConfig
from infoflow.gallery_models import model_slug
from infoflow.notes import cited, note_for, note_problem
from infoflow.prompts import PromptError, parse_prompts
from tests.test_browser import _new_page, _serve, browser  # noqa: F401  (fixtures)
from tests.test_two_models import PROMPTS, manifest, two_models  # noqa: F401  (fixtures)

GALLERY = Path(__file__).resolve().parent.parent / "prompts" / "gallery.toml"
# (layers, heads per layer) of the gallery's two models
DIMS = {"SmolLM2-135M-Instruct": (30, 9), "gemma3-270m": (18, 4)}


def test_a_note_cites_layers_and_head_lists_not_measurements():
    layers, heads = cited("Heads, as measured here: layer 23's attention writes it (9.6 %), and three heads do "
                          "most of it: 23.0, 23.1 and 23.7 (2.7, 2.4 and 2.3 points). Head 24.4 also looks. "
                          "Layers 5–6 too.")
    assert layers == [23, 5, 6] and heads == [(23, 0), (23, 1), (23, 7), (24, 4)]
    assert note_problem("heads 17.4 and 17.5", 18, 4) == \
        "names head 17.4, but the model has 4 heads per layer (0–3)"
    assert note_problem("layer 23's attention", 18, 4) == "names layer 23, but the model has 18 layers (0–17)"
    assert note_problem("2.7, 2.4 and 2.3 points; 96 %", 2, 1) is None


def test_notes_per_model_are_parsed_and_checked():
    src = ('[[prompt]]\nid = "a"\ntitle = "A"\ntext = "x y"\nnote = "layer 20"\n'
           'notes = { gemma3-270m = "layer 3" }\n')
    p = parse_prompts(src)[0]
    assert note_for(p.note, p.notes, "gemma3-270m") == "layer 3"
    assert note_for(p.note, p.notes, "SmolLM2-135M-Instruct") == "layer 20"
    with pytest.raises(PromptError, match=r"`notes` must map model names to notes"):
        parse_prompts(src.replace('{ gemma3-270m = "layer 3" }', "{ gemma3-270m = 3 }"))


def test_every_gallery_note_fits_each_model():
    """The shipped gallery: no note names a layer or head its model lacks (Gemma: 18 layers, 4 heads)."""
    doc = tomllib.loads(GALLERY.read_text(encoding="utf-8"))
    checked = 0
    for p in doc["prompt"]:
        for key, (layers, heads) in DIMS.items():
            note = note_for(p.get("note"), p.get("notes", {}), key)
            assert note_problem(note, layers, heads) is None, (p["id"], key, note)
            checked += bool(note)
    assert checked >= 20


def _site(tmp_path, two_models, extra: str):  # noqa: F811
    prompts = tmp_path / "p.toml"
    prompts.write_text(PROMPTS + extra, encoding="utf-8")
    return SiteConfig(prompts=prompts, out=tmp_path / "site", cache=str(tmp_path / "cache"), models=two_models,
                      live=False)


def test_build_refuses_a_note_naming_a_layer_the_model_lacks(two_models, tmp_path):  # noqa: F811
    gemma = model_slug(two_models[1])                       # tiny Gemma: 2 layers; tiny Llama: 3
    cfg = _site(tmp_path, two_models, '\n[[prompt]]\nid = "noted"\ntitle = "N"\ntext = "The capital of Spain is"\n'
                'note = "Pin layer 2\'s attention."\n')
    with pytest.raises(BuildError) as e:
        build(cfg, progress=False, log=lambda *a: None)
    msg = str(e.value)
    assert "\n" not in msg and "'noted'" in msg and f"on {gemma}:" in msg
    assert "names layer 2, but the model has 2 layers (0–1)" in msg and f"notes = {{ {gemma} = " in msg
    assert not (tmp_path / "site").exists()


def test_each_model_shows_its_own_note_and_a_missing_model_is_said(two_models, tmp_path, browser):  # noqa: F811
    gemma, llama = model_slug(two_models[1]), model_slug(two_models[0])
    cfg = _site(tmp_path, two_models, '\n[[prompt]]\nid = "noted"\ntitle = "N"\ntext = "The capital of Spain is"\n'
                f'note = "Pin layer 2\'s attention."\nnotes = {{ {gemma} = "On this model, layer 1." }}\n'
                '\n[[prompt]]\nid = "chat"\ntitle = "Chat"\ntext = "Hi there"\nchat = true\n')
    build(cfg, progress=False, log=lambda *a: None)
    entry = next(e for e in manifest(tmp_path / "site")["prompts"] if e["id"] == "noted")
    assert {v["key"]: v["note"] for v in entry["models"]} == {llama: "Pin layer 2's attention.", gemma: "On this model, layer 1."}
    chat = next(e for e in manifest(tmp_path / "site")["prompts"] if e["id"] == "chat")
    assert [m["key"] for m in chat["missing"]] == [gemma] and "no chat template" in chat["missing"][0]["why"]
    server, url = _serve(tmp_path / "site")
    ctx, pg = _new_page(browser)
    try:
        for model, want in [(None, "Pin layer 2's attention."), (gemma, "On this model, layer 1.")]:
            pg.goto(url + "p/noted.html" + (f"?model={model}" if model else ""))
            pg.wait_for_function("() => document.documentElement.dataset.viewerReady")
            notes = pg.eval_on_selector_all(".prompt-note", "ps => ps.filter((p) => !p.hidden).map((p) => p.textContent)")
            assert notes == [want], (model, notes)
        pg.goto(url + f"p/chat.html?model={gemma}")
        pg.wait_for_function("() => document.documentElement.dataset.viewerReady")
        assert pg.evaluate("document.documentElement.dataset.viewerReady") == "1"
        notice = pg.text_content("#model-notice")
        assert pg.is_visible("#model-notice") and f"not built on {gemma}" in notice and "no chat template" in notice
        assert f"shows {llama} instead" in notice
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()


def test_gemma_notes_are_what_gemma_measures(gemma_model):
    """The numbers prompts/gallery.toml's Gemma notes quote, measured again on Gemma 3 270M."""
    import numpy as np

    from infoflow import decompose
    d = decompose("When Mary and John went to the store, John gave a drink to", gemma_model, logit_lens=False)
    P, mary = d.n_tokens, d.tokens.index(" Mary")
    share = d.heads.proj[:, :, P - 1, mary]                          # (L, H) signed share of ' Mary'
    assert int(np.argmax(share.sum(1))) == 12 and abs(share[12].sum() - 0.250) < 0.005
    assert abs(share[12, 1] - 0.190) < 0.005 and abs(share[12, 3] - 0.038) < 0.005 and share[13, 3] < -0.02
    att = d.heads.pattern[:, :, P - 1, mary]
    assert abs(att[12, 1] - 0.42) < 0.01 and abs(att[13, 3] - 0.43) < 0.01
    d = decompose("zq blorf vint kex muda. zq blorf vint kex", gemma_model, logit_lens=False)
    P = d.n_tokens
    target = max(i for i in range(P - 1) if d.tokens[i] == d.tokens[-1]) + 1     # ' muda', after the earlier 'ex'
    att = d.heads.pattern[:, :, P - 1, target]
    assert att[5, 1] > 0.85 and att[5, 2] > 0.8 and att[5, 3] > 0.8 and abs(att[11, 2] - 0.66) < 0.01
    proj = d.heads.proj[:, :, P - 1, target]
    assert np.unravel_index(np.argmax(proj), proj.shape) == (11, 2) and abs(proj[11, 2] - 0.458) < 0.005

"""Issue 24, item 8: byte-fallback tokens. The words grouping merges the tokens of one character
(exactly: a group's part is the sum of its tokens' parts), and the viewer shows the characters
they form, with a subscript where a character spans tokens."""
from __future__ import annotations

import numpy as np
import pytest

from infoflow.tokens import display_tokens, marker_bytes, utf8_owed, word_groups
from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

TEXT = "我爱你 🙂 東京は"


def test_words_merge_the_tokens_of_one_character(default_model):
    from infoflow.decompose import tokenize
    tokens = display_tokens(default_model.tokenizer, tokenize(default_model, TEXT))
    assert any(marker_bytes(t) for t in tokens)                 # SmolLM2 cuts these characters into bytes
    groups = word_groups(tokens, [False] * len(tokens))
    # every group's bytes decode as whole characters, and the groups spell the text
    text = ""
    for g in sorted(set(groups)):
        parts = [tokens[i] for i in range(len(tokens)) if groups[i] == g]
        raw = b"".join(marker_bytes(t) if marker_bytes(t) else t.encode() for t in parts)
        text += raw.decode("utf-8")                             # raises where a group splits a character
    assert text == TEXT
    assert len(set(groups)) < len(tokens)
    assert utf8_owed(b"\xe6", 0) == 2 and utf8_owed(b"\x88", 2) == 1 and utf8_owed(b"\x91", 1) == 0


def test_byte_groups_are_exact(default_model):
    import infoflow
    w = infoflow.decompose(TEXT, default_model, groups="words", logit_lens=False, heads=False)
    t = infoflow.decompose(TEXT, default_model, logit_lens=False, heads=False)
    groups = np.asarray(w.groups)
    for g in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == g)
        np.testing.assert_allclose(w.mlp_proj[..., g], t.mlp_proj[..., members].sum(-1), atol=1e-5)


@pytest.mark.browser
def test_viewer_shows_the_characters_byte_tokens_form(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    got = page.evaluate("""async () => {
        const f = await import(new URL('../static/js/format.js', location.href));
        return [f.tokenTexts(['<0xE6><0x88>', '<0x91>', '<0x20><0xE6>', '<0x9D>', '<0xB1>', ' 🙂', '<0xE4>']),
                f.displayToken('<0xE6><0x88><0x91>x'), f.displayToken('<0xE6>')];
    }""")
    assert got[0] == ["我\u2081\u2044\u2082", "我\u2082\u2044\u2082", "\u2423東\u2081\u2044\u2083", "\u2423東\u2082\u2044\u2083",
                      "\u2423東\u2083\u2044\u2083", "\u2423🙂", "<0xE4>"]
    assert got[1] == "我x" and got[2] == "<0xE6>"

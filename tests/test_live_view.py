"""The live page's view links and exact custom groups (issue 11), and "Recompute exactly in your
browser" on gallery pages: real-model browser tests against `infoflow.decompose`."""
from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest

from tests.test_browser import browser  # noqa: F401  (the session's one shared Chromium)
from tests.test_live import _open_live, _wait_state, context, live_server  # noqa: F401  (fixtures)

VIEW_READY = "() => window.infoflowViewer && window.infoflowViewer.idle && document.documentElement.dataset.viewerReady === '1'"


def _run_link(context, live_server, fragment: str):
    """Open the live page at #fragment, confirm (Run), and wait for the result's viewer."""
    page = _open_live(context.new_page(), live_server + "live/index.html#" + fragment)
    assert page.is_visible("#link-notice")            # a shared link asks before downloading
    page.click("#run")
    assert _wait_state(page, ["error", "done"]) == "done", page.text_content("#live-error")
    page.wait_for_function(VIEW_READY, timeout=120_000)
    return page


@pytest.mark.browser
@pytest.mark.slow
def test_shared_link_reopens_the_same_view(context, live_server):
    """The view state goes in the URL next to text=, and a link reopens it after Run."""
    text = "The capital of France is"
    view = "m=proj&g=tokens&h=&o=size&pin=20.0.3&th=20.1"
    page = _run_link(context, live_server, "text=" + urllib.parse.quote(text) + "&" + view)
    s = page.evaluate("() => window.infoflowViewer.state")
    assert (s["metric"], s["variant"], s["order"]) == ("proj", "tokens", "size")
    assert s["pin"] == {"l": 20, "k": 0, "p": 3} and s["head"] == {"l": 20, "h": 1} and s["hidden"] == []
    page.wait_for_selector("#heads table.heads-map td")         # the pinned attention cell's heads
    # a change goes into the URL, after the prompt
    page.evaluate("() => window.infoflowViewer.viewer.set({metric: 'delta', pin: {l: 5, k: 1, p: 2}})")
    page.wait_for_function(VIEW_READY)
    q = urllib.parse.parse_qs(page.evaluate("() => location.hash").lstrip("#"), keep_blank_values=True)
    assert q["text"] == [text] and q["m"] == ["delta"] and q["pin"] == ["5.1.2"] and q["g"] == ["tokens"]
    link = page.evaluate("() => location.href")
    # the link, opened afresh, shows that view once run
    again = _run_link(context, live_server, link.split("#", 1)[1])
    s2 = again.evaluate("() => window.infoflowViewer.state")
    assert (s2["metric"], s2["variant"], s2["order"], s2["pin"]) == ("delta", "tokens", "size", {"l": 5, "k": 1, "p": 2})
    # a different prompt starts from the default view
    again.fill("#prompt", "Paris is")
    again.click("#run")
    assert _wait_state(again, ["error", "done"]) == "done"
    again.wait_for_function("() => { const q = new URLSearchParams(location.hash.slice(1)); "
                            "return q.get('text') === 'Paris is' && q.get('m'); }")
    q = urllib.parse.parse_qs(again.evaluate("() => location.hash").lstrip("#"))
    assert q["text"] == ["Paris is"] and q["m"] == ["norm"] and "pin" not in q
    # Back: the earlier prompt's result again (kept in the tab), in that entry's view, never its
    # view applied to the other prompt's result; Forward: the other one
    shown = "() => ({text: document.getElementById('prompt').value, state: window.infoflowViewer.state," \
            " tokens: window.infoflowViewer.viewer.D.tokens.join('')})"
    again.go_back()
    again.wait_for_function("() => document.getElementById('prompt').value === " + json.dumps(text)
                            + " && window.infoflowViewer.viewer.D.tokens.join('').includes('France')")
    again.wait_for_function(VIEW_READY)
    b = again.evaluate(shown)
    assert b["text"] == text and b["state"]["metric"] == "delta" and b["state"]["pin"] == {"l": 5, "k": 1, "p": 2}
    again.go_forward()
    again.wait_for_function("() => window.infoflowViewer.viewer.D.tokens.join('').includes('Paris is')")
    again.wait_for_function(VIEW_READY)
    f = again.evaluate(shown)
    assert f["text"] == "Paris is" and f["state"]["metric"] == "norm" and f["state"]["pin"] is None


@pytest.mark.browser
def test_result_on_screen_keeps_out_of_the_next_prompts_url(context, live_server):
    """While the next prompt computes, the result on screen still takes changes (a metric, a
    zoom), but never writes its own prompt into the next prompt's history entry."""
    first, second = "The capital of France is", "When Mary and John went to the store, John gave a drink to her"
    page = _run_link(context, live_server, "text=" + urllib.parse.quote(first))
    page.fill("#prompt", second)
    page.click("#run")
    page.evaluate("() => { const v = window.infoflowViewer.viewer; v.set({metric: 'delta'}); v.viewChanged(); }")
    page.wait_for_timeout(400)                                    # past the zoom's 250 ms debounce
    during = page.evaluate("() => [location.hash, document.documentElement.dataset.liveState,"
                           " window.infoflowViewer.viewer.state.metric]")
    assert during[1] not in ("done", "error"), "the second run ended too soon for this test"
    assert during[2] == "delta"                                   # the old result did change
    q = urllib.parse.parse_qs(during[0].lstrip("#"))
    assert q["text"] == [second] and "m" not in q, during[0]
    assert _wait_state(page, ["error", "done"]) == "done"
    page.wait_for_function(VIEW_READY)
    q = urllib.parse.parse_qs(page.evaluate("() => location.hash").lstrip("#"))
    assert q["text"] == [second] and q["m"] == ["norm"]
    page.go_back()                                                # the first prompt's own entry
    page.wait_for_function("() => window.infoflowViewer.viewer.D.tokens.join('').includes('France')")
    q = urllib.parse.parse_qs(page.evaluate("() => location.hash").lstrip("#"))
    assert q["text"] == [first]


@pytest.mark.browser
@pytest.mark.slow
def test_custom_groups_are_exact_on_the_live_page(context, live_server, default_model):
    """A custom grouping on the live page is recomputed in the worker (vectors summed, not norms):
    its stored values match infoflow.decompose(text, groups=...) to the 8-bit step, where the
    gallery's sum of norms does not. Cancel leaves the view as it was."""
    import infoflow
    text = "When Mary and John went to the store"
    P = len(infoflow.decompose(text, default_model, logit_lens=False, heads=False).tokens)
    groups = [0, 1, 1, 1, 2] + [3] * (P - 5)
    py = infoflow.decompose(text, default_model, groups=groups, logit_lens=False, heads=False)
    page = _run_link(context, live_server, f"text={urllib.parse.quote(text)}&g=custom&cg={'.'.join(map(str, groups))}")
    got = page.evaluate("""() => { const v = window.infoflowViewer.viewer, V = v.V;
      return {exact: V.exact, label: V.label, G: V.G, norm: Array.from(V.norm), delta: Array.from(V.delta),
              proj: Array.from(V.proj), variant: v.state.variant,
              option: document.querySelector('#grouping option[value=custom]').textContent,
              approx: Array.from(v.D.variants.find((x) => x.name === 'tokens').norm)}; }""")
    assert got["exact"] is True and got["variant"] == "custom" and "exact" in got["option"]
    assert "exact" in page.text_content("#custom-groups") and "approximate" not in page.text_content("#custom-groups")
    L, G = py.n_layers, len(py.sources)
    assert got["G"] == G
    for key, (a, b) in {"norm": ("attn_norm", "mlp_norm"), "delta": ("attn_delta_norm", "mlp_delta_norm"),
                        "proj": ("attn_proj", "mlp_proj")}.items():
        ref = np.stack([getattr(py, a), getattr(py, b)], axis=1)                  # (L, 2, P, G)
        js = np.array(got[key]).reshape(ref.shape)
        step = np.abs(ref).max(-1, keepdims=True) / (127 if key == "proj" else 255)
        assert np.all(np.abs(js - ref) <= step * (1 + 1e-6) + 1e-4 * np.abs(ref)), key
    # the approximation (sum of the tokens' norms) is far off somewhere: the test can tell them apart
    tok = np.array(got["approx"]).reshape(L, 2, P, P)
    approx = np.zeros((L, 2, P, G))
    for p, g in enumerate(groups):
        approx[..., g] += tok[..., p]
    ref = np.stack([py.attn_norm, py.mlp_norm], axis=1)
    assert (np.abs(approx - ref) / np.abs(ref).max(-1, keepdims=True)).max() > 10 / 255    # 10 steps of a row
    # the regroup brought the grouping's per-head data: the heads panel shows its sources
    page.evaluate(f"() => window.infoflowViewer.viewer.set({{pin: {{l: {L - 1}, k: 0, p: {P - 1}}}}})")
    page.wait_for_selector("#heads table.heads-map td")
    cols = page.eval_on_selector_all('#heads tr[data-head="0"] td[data-src]', "ts => ts.map(t => +t.dataset.src)")
    assert sorted(cols) == list(range(G))
    # another grouping, cancelled while it computes: the view stays on the exact one above
    page.evaluate(f"() => window.infoflowViewer.viewer.set({{custom: {list(range(P))}}})")
    page.wait_for_function("() => document.documentElement.dataset.liveState === 'regrouping'")
    page.click("#cancel")
    assert _wait_state(page, ["done", "error"]) == "done"
    page.wait_for_function(VIEW_READY)
    assert page.evaluate("() => window.infoflowViewer.state.custom") == groups
    assert "Cancelled" in page.text_content("#status")
    assert "cg=" + ".".join(map(str, groups)) in page.evaluate("() => location.hash")


@pytest.mark.browser
@pytest.mark.slow
def test_gallery_page_recomputes_custom_groups_exactly(context, live_server, gallery_site, default_model):
    """A gallery page's custom grouping is approximate until the visitor presses "Recompute
    exactly in your browser": then the live page's worker decomposes the page's prompt again
    (its token ids checked against the data file) and the values match infoflow.decompose."""
    import infoflow
    entries = json.loads((gallery_site / "data" / "manifest.json").read_text(encoding="utf-8"))["prompts"]
    entry = min((e for e in entries if e["n_tokens"] >= 6), key=lambda e: e["n_tokens"])   # a short one
    P = entry["n_tokens"]
    groups = [0, 1, 1, 1] + list(range(2, P - 2))
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(live_server + entry["page"] + "#g=custom&cg=" + ".".join(map(str, groups)))
    page.wait_for_function(VIEW_READY)
    assert page.evaluate("() => window.infoflowViewer.viewer.V.exact") is False
    assert "approximate" in page.text_content("#custom-groups")
    assert not [u for u in requested if "/live/" in u]                  # nothing loaded before the click
    page.click("#group-exact")
    page.wait_for_function("() => window.infoflowViewer.idle && window.infoflowViewer.viewer.V.exact === true",
                           timeout=180_000)
    assert "exact" in page.eval_on_selector('#grouping option[value="custom"]', "o => o.textContent")
    got = page.evaluate("() => { const V = window.infoflowViewer.viewer.V; return {G: V.G, sources: V.sources, "
                        "norm: Array.from(V.norm), proj: Array.from(V.proj)}; }")
    py = infoflow.decompose(entry["text"], default_model, groups=groups, logit_lens=False, heads=False,
                            chat=entry["chat"])
    assert got["G"] == len(py.sources) and got["sources"] == py.sources
    for key, (a, b) in {"norm": ("attn_norm", "mlp_norm"), "proj": ("attn_proj", "mlp_proj")}.items():
        ref = np.stack([getattr(py, a), getattr(py, b)], axis=1)
        js = np.array(got[key]).reshape(ref.shape)
        step = np.abs(ref).max(-1, keepdims=True) / (127 if key == "proj" else 255)
        assert np.all(np.abs(js - ref) <= step * (1 + 1e-6) + 1e-4 * np.abs(ref)), key
    # the next grouping is computed exactly too, and can be cancelled from the custom-groups bar
    page.evaluate(f"() => window.infoflowViewer.viewer.set({{custom: {list(range(P))}}})")
    page.wait_for_selector("#group-cancel", state="visible")
    page.click("#group-cancel")
    page.wait_for_function("() => window.infoflowViewer.idle && document.getElementById('group-cancel').hidden")
    assert page.evaluate("() => window.infoflowViewer.state.custom") == groups
    assert "Cancelled" in page.text_content("#status")

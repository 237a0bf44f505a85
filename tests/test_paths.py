"""The attribution graph (paths.py, docs/graph.md) against tests/naive.py's float64 autograd
reference, on tiny random models of every family, and against the reference numbers for the
gallery's IOI prompt on the default model (shared notes: an independent float64 implementation)."""
import numpy as np
import pytest
import torch

import infoflow
from infoflow import paths
from infoflow.decompose import InputError

from .conftest import tiny_model
from .naive import naive_graph
from .test_families import FAMILIES as _DECOMPOSED, PROMPT, rel

FAMILIES = ["llama-bias"] + _DECOMPOSED      # every tiny family, the Llama with every bias too


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    lm = tiny_model(request.param)
    ids = lm.tokenizer(PROMPT)["input_ids"]
    contrast = None if request.param == "mha" else 9          # one family takes the demeaned logit
    g = infoflow.graph(PROMPT, target=5, contrast=contrast, position=-1, model=lm, dtype="float64",
                       node_threshold=1.0, edge_threshold=1.0)
    ref = naive_graph(lm.hf, torch.tensor([ids]), 5, contrast, len(ids) - 1)
    return request.param, lm, g, ref


def test_node_effects_match_naive_autograd(family):
    kind, lm, g, ref = family
    L, Hx, P = g.heads.shape
    assert rel(g.embed, ref["effect"]["embed"]) <= 1e-6     # Gemma: 1 + w rounds in float32 first
    naive_heads = np.stack([np.stack([ref["effect"][("head", l, h)].numpy() for h in range(Hx)])
                            for l in range(L)])
    # Writes: ours are read off the real (float32) residual, the reference's come from its own
    # float64 pass through the frozen model; they differ by the forward pass's rounding.
    assert rel(g.heads, naive_heads) <= 1e-6
    assert rel(g.mlp, np.stack([ref["effect"][("mlp", l)].numpy() for l in range(L)])) <= 1e-6
    # T: the frozen model's equals the real forward pass's (float32 logits)
    assert abs(g.frozen_value - ref["T"]) <= 1e-6 * max(1, abs(ref["T"]))
    assert abs(g.value - ref["real"]) <= 1e-9 * max(1, abs(ref["real"]))
    assert abs(g.frozen_value - g.value) <= 1e-4 * max(1, abs(g.value))


def test_complete_by_construction(family):
    """Σ_p effect(embed_p) + effect(bias) = T; every node's in-edges sum to its effect, which
    is its direct effect plus its out-edges; unpruned, completeness is exactly 1."""
    kind, lm, g, ref = family
    assert abs(g.embed.sum() + g.bias - g.frozen_value) <= 1e-12 * max(1, abs(g.value))
    assert g.has_bias == (g.bias != 0)
    nodes, E = paths.full_edges(g)                        # dst × src, the target last
    eff = nodes["effect"]
    writers = (nodes["kind"] == paths.HEAD) | (nodes["kind"] == paths.MLP)
    assert writers.sum() > 0
    assert np.allclose(E.sum(1)[writers], eff[writers], rtol=0, atol=1e-10 * abs(eff).max())
    direct = np.zeros(len(eff))
    direct[:-1] = E[-1, :-1]                              # the target's in-edges: direct effects
    out = E[:-1].sum(0)                                   # edges into every other node
    body = nodes["kind"] != paths.LOGIT
    if g.has_bias:
        body &= nodes["kind"] != paths.BIAS               # the bias node: Σ out-edges = its effect
        assert abs(E[:, nodes["kind"] == paths.BIAS].sum() - g.bias) <= 1e-10 * abs(eff).max()
    assert np.allclose((direct + out)[body], eff[body], rtol=0, atol=1e-10 * abs(eff).max())
    assert abs(g.completeness - 1) <= 1e-9


def test_edges_match_naive_frozen_maps(family):
    """edge(a → b) = ⟨g_b, J_b(w_a)⟩ with J_b applied by the naive reference, on a sample."""
    kind, lm, g, ref = family
    nodes, E = paths.full_edges(g)
    rng = np.random.default_rng(0)
    P = len(g.tokens)
    dst = [j for j in range(len(nodes["kind"])) if nodes["kind"][j] in (paths.HEAD, paths.MLP)]
    checked = 0
    for j in rng.choice(dst, size=12, replace=False):
        kd, l, h, q = (int(nodes[k][j]) for k in ("kind", "layer", "head", "position"))
        gb = ref["grads"][("head", l, h) if kd == paths.HEAD else ("mlp", l)][q]
        srcs = np.flatnonzero(E[j] != 0)
        for a in rng.choice(srcs, size=min(4, len(srcs)), replace=False) if len(srcs) else []:
            ka, la, ha, pa = (int(nodes[k][a]) for k in ("kind", "layer", "head", "position"))
            if ka == paths.BIAS:
                continue
            w = (ref["emb"][pa] if ka == paths.EMBED else
                 ref["writes"][("head", la, ha) if ka == paths.HEAD else ("mlp", la)][pa])
            field = torch.zeros(P, w.shape[0], dtype=torch.float64)
            field[pa] = w
            naive = float(gb @ ref["J"]("head" if kd == paths.HEAD else "mlp", l, h, q, field))
            assert E[j, a] == pytest.approx(naive, rel=1e-6, abs=1e-9 * abs(E).max())
            checked += 1
    assert checked >= 10


def test_per_source_split_sums_to_effect(family):
    kind, lm, g, ref = family
    assert g.heads_by_source.shape[-1] == len(g.sources)
    assert rel(g.heads_by_source.sum(-1), g.heads) <= 1e-9
    assert rel(g.mlp_by_source.sum(-1), g.mlp) <= 1e-9


def test_pruning_keeps_largest_and_reports_completeness():
    lm = tiny_model("gqa")
    g = infoflow.graph(PROMPT, target=5, contrast=9, model=lm, dtype="float64", node_threshold=0.5,
                       edge_threshold=0.9)
    everyone = np.abs(np.concatenate([g.embed, g.heads.ravel(), g.mlp.ravel()]))
    kept = np.abs(g.nodes["effect"][:-1])
    assert kept.sum() >= 0.5 * everyone.sum() and len(kept) < len(everyone)
    assert kept.min() >= np.sort(everyone)[::-1][len(kept) - 1] - 1e-12    # the largest ones
    assert g.nodes["kind"][-1] == paths.LOGIT
    n = len(g.nodes["kind"])
    assert ((g.edges["src"] < n) & (g.edges["dst"] < n)).all() and np.isfinite(g.edges["weight"]).all()
    assert np.isfinite(g.completeness) and g.completeness != 1.0


def test_bad_targets_say_what_to_fix(default_model):
    with pytest.raises(InputError, match=r"is 2 tokens on this model, \[.*\]"):
        infoflow.graph("The capital of France is", target=" Parisville", model=default_model)
    with pytest.raises(InputError, match="out of range: the prompt has 5 tokens"):
        infoflow.graph("The capital of France is", position=7, model=default_model)
    with pytest.raises(InputError, match="same token"):
        infoflow.graph("The capital of France is", target=" Paris", contrast=" Paris", model=default_model)


IOI = "When Mary and John went to the store, John gave a drink to"


def test_ioi_matches_the_reference_numbers(default_model):
    """../shared/notes/attribution-graph-reference.md: an independent float64 autograd run."""
    g = infoflow.graph(IOI, target=" Mary", contrast=" John", model=default_model, dtype="float64")
    assert g.value == pytest.approx(6.1196, abs=1e-4)
    assert g.frozen_value == pytest.approx(g.value, abs=1e-4)
    expect = {(23, 3, 13): 3.601, (29, 1, 13): 1.876, (29, 0, 13): -1.532, (24, 4, 13): -1.324,
              (23, 0, 13): 1.303, (23, 1, 13): 0.991, (23, 7, 13): 0.631, (23, 3, 2): -0.473,
              (25, 2, 13): 0.460, (28, 1, 13): 0.398}
    top = np.argsort(-np.abs(g.heads).ravel())[:10]
    assert {tuple(int(i) for i in np.unravel_index(t, g.heads.shape)) for t in top} == set(expect)
    for (l, h, p), e in expect.items():
        assert g.heads[l, h, p] == pytest.approx(e, abs=6e-4)
    # conservation at head 23.3@13: its in-edges sum to +3.600759
    every = paths.all_nodes(paths.node_effects(*_reader_args(g)), g.has_bias)
    dst = paths.select(every, np.flatnonzero((every["kind"] == paths.HEAD) & (every["layer"] == 23)
                                             & (every["head"] == 3) & (every["position"] == 13)))
    E = paths.edge_matrix(g._reader, dst, every, paths.node_effects(*_reader_args(g)))
    assert E.sum() == pytest.approx(3.600759, abs=2e-5)
    assert 0.5 < g.completeness <= 1.5
    assert g.paths and abs(g.paths[0][0]) > 0.1


def _reader_args(g):
    r = g._reader
    return r.captured, r.fl, r.layers, r.grads, r.writes, r.target, r.dtype

"""The engine against an independent naive implementation, and the sum identity."""
import numpy as np
import pytest
import torch

from infoflow import InputError, decompose
from infoflow.tokens import word_groups

from .conftest import tiny_model
from .naive import naive_decompose

PROMPT = "tiny test!"   # 11 tokens with BOS: P <= 12 keeps the naive loops quick


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module", params=["gqa", "mha", "llama-bias", "qwen2"])
def tiny_case(request):
    lm = tiny_model(request.param, layers=3 if request.param == "gqa" else 2)
    d = decompose(PROMPT, lm, dtype="float64")
    ids = torch.tensor([d.token_ids.tolist()])
    ref = naive_decompose(lm.hf, ids)
    return request.param, lm, d, ref


def test_engine_matches_naive_reference(tiny_case):
    kind, lm, d, ref = tiny_case
    P = d.n_tokens
    assert P <= 12 and d.attn_norm.shape == (lm.info["layers"], P, ref["S"])
    assert d.has_bias == (kind in ("llama-bias", "qwen2"))
    assert (d.sources[-1] == "bias") == d.has_bias
    for ours, theirs in [("attn_norm", "attn_norm"), ("mlp_norm", "mlp_norm"),
                         ("attn_delta_norm", "attn_delta"), ("mlp_delta_norm", "mlp_delta"),
                         ("attn_proj", "attn_proj"), ("mlp_proj", "mlp_proj")]:
        assert rel(getattr(d, ours), ref[theirs].numpy()) <= 1e-5, ours
    assert np.array_equal(d.pred_ids, ref["top_ids"].numpy())
    assert rel(d.logit_attr, ref["logit_attr"].numpy()) <= 1e-5


def test_causal_triangle_is_zero_above_diagonal(tiny_case):
    _, _, d, ref = tiny_case
    P = d.n_tokens
    upper = np.triu(np.ones((P, P), dtype=bool), k=1)
    for arr in (d.attn_norm, d.mlp_norm, d.attn_proj, d.mlp_delta_norm):
        assert np.all(arr[:, :, :P][:, upper] == 0)
    # The naive dense tensor agrees that nothing ever flows from the future.
    assert float(ref["final"][:, :P][torch.from_numpy(upper)].abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["gqa", "mha", "qwen2"])
def test_sum_identity_float32(kind):
    d = decompose(PROMPT, tiny_model(kind), dtype="float32")
    assert d.worst_recon_error <= 1e-4
    assert d.logit_error <= 1e-3


def test_shares_and_attributions_sum(tiny_case):
    _, _, d, _ = tiny_case
    for proj in (d.attn_proj, d.mlp_proj):
        assert np.allclose(proj.sum(-1), 1.0, atol=1e-4)
    assert np.allclose(d.logit_attr.sum(-1), d.pred_logits, atol=1e-3)


def test_demeaned_attribution_of_the_top_prediction(tiny_case):
    """Against the mean unembedding row: per source, (w ⊙ c[p, s] / rms[p]) · (W_U[t] − mean_v W_U[v])
    by plain loops, float64; over the sources, the real logit minus the mean logit at p."""
    _, lm, d, ref = tiny_case
    WU = lm.hf.lm_head.weight.double()
    u = WU - WU.mean(0)
    norm, fin = lm.hf.model.norm, ref["rec"]["final"].double()
    w, eps = norm.weight.double(), getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    P, S = d.n_tokens, ref["S"]
    direct = np.zeros((P, S))
    for p in range(P):
        rms = torch.sqrt(fin[p].pow(2).mean() + eps)
        t = int(d.pred_ids[p, 0])
        for s in range(S):
            direct[p, s] = float((w * ref["final"][p, s] / rms) @ u[t])
    assert d.top_attr_demeaned.shape == (P, S)
    assert rel(d.top_attr_demeaned, direct) <= 1e-5
    logits = ref["logits"]                                            # the model's own, (P, V)
    top = logits.gather(1, torch.as_tensor(d.pred_ids[:, :1])).squeeze(1)
    assert np.allclose(d.top_attr_demeaned.sum(-1), (top - logits.mean(-1)).numpy(), atol=1e-4)
    # not the plain attribution: every source's part moved by its share of the mean logit
    assert not np.allclose(d.top_attr_demeaned, d.logit_attr[:, 0], atol=1e-3)
    best = d.top_sources(-1, n=2)
    assert [s for s, _ in best] == list(np.argsort(-direct[-1])[:2]) and best[0][1] >= best[1][1]


def test_groups_sum_vectors_not_norms():
    lm = tiny_model("qwen2")
    base = decompose(PROMPT, lm, dtype="float64")
    groups = [0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3][: base.n_tokens]
    g = decompose(PROMPT, lm, dtype="float64", groups=groups)
    ref = naive_decompose(lm.hf, torch.tensor([base.token_ids.tolist()]))
    G = max(groups) + 1
    assert g.attn_norm.shape == (2, base.n_tokens, G + 1)        # + bias source
    assert g.logit_attr.shape == (base.n_tokens, 5, G + 1)
    assert g.sources[-1] == "bias" and g.sources[0] == base.tokens[0] + base.tokens[1]
    # Reference: sum the naive per-source vectors within each group, then take norms.
    states = ref["states"]                                        # (2L, P, S, d)
    member = torch.zeros(ref["S"], G + 1, dtype=torch.float64)
    for s, gi in enumerate(groups + [G]):
        member[s, gi] = 1
    grouped = torch.einsum("kpsd,sg->kpgd", states, member).norm(dim=-1)
    ours = np.stack([g.attn_norm, g.mlp_norm], 1).reshape(grouped.shape)
    assert rel(ours, grouped.numpy()) <= 1e-5
    # ...which is not the sum of norms (that would be the approximate, in-browser kind).
    summed_norms = np.stack([base.attn_norm, base.mlp_norm], 1).reshape(-1, base.n_tokens, ref["S"]) @ member.numpy()
    assert rel(ours, summed_norms) > 1e-3
    assert np.allclose(g.logit_attr.sum(-1), base.logit_attr.sum(-1), atol=1e-6)
    summed = base.top_attr_demeaned @ member.numpy()                  # per group: its tokens' parts
    assert np.allclose(g.top_attr_demeaned, summed, atol=1e-6)
    assert np.allclose(g.attn_proj.sum(-1), 1.0, atol=1e-6)


def test_bad_input_messages():
    lm = tiny_model("gqa")
    with pytest.raises(InputError, match="empty"):
        decompose("   ", lm)
    with pytest.raises(InputError, match="limit is 8"):
        decompose("a longer prompt", lm, max_tokens=8)
    with pytest.raises(InputError, match="one group id per token"):
        decompose("abc", lm, groups=[0, 1])


def test_word_rule_unit():
    toks = ["<|im_start|>", "The", " un", "believ", "ably", " big", ",", " 4", "2", "\n", "Next"]
    special = [True] + [False] * 10
    assert word_groups(toks, special) == [0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8]


# --------------------------------------------------------------------- the real default model

def test_default_model_sum_identity_and_paris(default_model):
    d = decompose("The capital of France is", default_model)
    assert d.tokens[-1] == " is"
    assert d.top_prediction()[0] == " Paris"
    assert d.worst_recon_error <= 1e-4
    assert d.logit_error <= 1e-3
    assert d.attn_norm.shape == (30, d.n_tokens, d.n_tokens) and not d.has_bias
    assert np.allclose(d.mlp_proj.sum(-1), 1.0, atol=1e-4)
    assert np.allclose(d.logit_attr.sum(-1), d.pred_logits, atol=1e-3)
    # Lens at the last cell is the model's own prediction.
    assert d.lens_ids[-1, 1, -1, 0] == d.pred_ids[-1, 0]
    assert d.model["fingerprint"].startswith("sha256:") and d.model["layers"] == 30


def test_default_model_words(default_model):
    d = decompose("Unbelievably, the tokenizer's pieces rejoin.", default_model, groups="words",
                  logit_lens=False)
    assert d.lens_ids is None
    # Every group's label is the concatenation of its tokens, and each starts a word.
    assert "".join(d.sources) == "".join(d.tokens)
    for label in d.sources[1:]:
        assert label[0] in " ,.'" or label[0].isupper()
    assert len(d.sources) < d.n_tokens            # some sub-word pieces were joined
    assert d.worst_recon_error <= 1e-4


def test_memory_budget_refuses_with_estimate():
    lm = tiny_model("gqa")
    with pytest.raises(InputError, match=r"needs about .* GiB.*budget of .*--max-memory"):
        decompose(PROMPT, lm, max_memory=1000)
    est32 = decompose(PROMPT, lm).timings["estimate"]
    est64 = decompose(PROMPT, lm, dtype="float64").timings["estimate"]
    assert est64["macs"] == est32["macs"] and est64["bytes"] > est32["bytes"]   # float64 needs more
    between = (est32["bytes"] + est64["bytes"]) // 2
    decompose(PROMPT, lm, max_memory=between)
    with pytest.raises(InputError, match="--max-memory"):
        decompose(PROMPT, lm, dtype="float64", max_memory=between)


@pytest.mark.parametrize("kind", ["gqa", "llama-bias", "qwen2"])
def test_precomputed_mlp_ordering_matches_naive(kind):
    """Long prompts switch late positions to M_p = W_down·diag(g_p)·W_up; force it on a tiny model."""
    from infoflow.decompose import decompose_variants

    lm = tiny_model(kind)
    d = decompose_variants(PROMPT, lm, {"t": None}, dtype="float64", late_from=4)["t"]
    assert d.timings["ordering"].startswith("precomputed") and "4.." in d.timings["ordering"]
    ref = naive_decompose(lm.hf, torch.tensor([d.token_ids.tolist()]))
    for ours, theirs in [("mlp_norm", "mlp_norm"), ("mlp_delta_norm", "mlp_delta"), ("mlp_proj", "mlp_proj"),
                         ("attn_norm", "attn_norm")]:
        assert rel(getattr(d, ours), ref[theirs].numpy()) <= 1e-5, ours
    assert rel(d.logit_attr, ref["logit_attr"].numpy()) <= 1e-5
    assert d.worst_recon_error <= 1e-5
    assert decompose(PROMPT, lm).timings["ordering"] == "direct"   # P = 11 is far below break-even


@pytest.mark.parametrize("V,bias", [(20000, False), (20001, True)])
def test_logit_lens_matches_softmax_topk(V, bias):
    """The blocked lens (grouped top-k, online log-sum-exp) against plain softmax + topk."""
    from infoflow.logits import final_scale, logit_lens
    from infoflow.weights import Unembed
    g = torch.Generator().manual_seed(V)
    d, N, k = 48, 70, 5
    unembed = Unembed(w_norm=1 + 0.1 * torch.randn(d, generator=g), eps=1e-5,
                      W_U=torch.randn(V, d, generator=g),
                      b_U=torch.randn(V, generator=g) if bias else None)
    resid = 3 * torch.randn(N, d, generator=g)
    ids, probs = logit_lens(resid, unembed, k)
    logits = (resid * final_scale(resid, unembed)).double() @ unembed.W_U.double().T
    if bias:
        logits += unembed.b_U.double()
    want_p, want_ids = torch.softmax(logits, -1).topk(k, dim=-1)
    assert torch.equal(ids, want_ids)
    assert torch.allclose(probs.double(), want_p, rtol=1e-4, atol=1e-7)


def test_recon_error_of_a_zero_residual_is_the_absolute_error_not_nan():
    """A position whose residual is exactly zero (a token with a zero embedding row, e.g. a pad
    id used as BOS) gets the absolute error of the sum identity instead of 0/0."""
    from infoflow.engine import _relative_error, triangle

    tri = triangle(3, False)
    d = 4
    r = torch.tensor([[0.0] * d, [1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 4.0, 0.0]])
    C = torch.zeros(tri.T, d)
    for p in range(3):                       # every position's parts: r[p] split over its sources
        rows = (tri.pos == p).nonzero().flatten()
        C[rows] = r[p] / len(rows)
    assert _relative_error(C, r, tri) < 1e-7
    C[(tri.pos == 0).nonzero().flatten()] += 1e-3        # position 0's parts no longer sum to 0
    err = _relative_error(C, r, tri)
    assert np.isfinite(err) and abs(err - 1e-3 * d ** 0.5) < 1e-6

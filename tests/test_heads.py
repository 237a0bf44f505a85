"""Per-head attribution (issue 13): the engine's split of every attention write by query head,
against the naive float64 reference, the real model's own head outputs, and a known answer."""
import numpy as np
import pytest
import torch

from infoflow import engine as E
from infoflow.weights import has_bias_source
from infoflow.decompose import _nnsight, _weights, tokenize
from infoflow.trace import capture

from .conftest import tiny_model
from .naive import naive_decompose, naive_head_stats

PROMPT = "tiny test!"   # 11 tokens with BOS


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def engine_heads(lm, groupings=(None,), dtype=torch.float64, prompt=PROMPT):
    """decompose_stack(heads=True) on one prompt: (HeadStats per grouping, token ids, captured)."""
    ids = tokenize(lm, prompt)
    captured = capture(_nnsight(lm), torch.tensor([ids]))
    layers, unembed = _weights(lm, dtype)
    tri = E.triangle(len(ids), has_bias_source(layers, unembed))
    res = E.decompose_stack(captured, layers, tri, list(groupings), dtype=dtype, heads=True)
    return res.heads, ids, captured


@pytest.fixture(scope="module", params=["gqa", "mha", "llama-bias", "qwen2"])
def case(request):
    lm = tiny_model(request.param, layers=3 if request.param == "gqa" else 2)
    (hs,), ids, _ = engine_heads(lm)
    ref = naive_decompose(lm.hf, torch.tensor([ids]))
    return request.param, lm, hs, ref


def test_heads_match_naive_reference(case):
    kind, lm, hs, ref = case
    want = naive_head_stats(ref)
    H = lm.info["heads"]
    o_bias = kind == "llama-bias"              # qwen2 has biases on q/k/v only, not o_proj
    assert hs.norm.shape == (lm.info["layers"], H + int(o_bias), len(ref["rec"]["pre"][0]), ref["S"])
    for name in ("norm", "proj", "write_norm", "write_proj"):
        assert rel(getattr(hs, name).numpy(), want[name].numpy()) <= 1e-5, name
    # every head does something in a random model, and nothing flows from the future
    assert (hs.write_norm[:, :H] > 0).all()
    P = hs.norm.shape[2]
    upper = np.triu(np.ones((P, P), dtype=bool), k=1)
    assert np.all(hs.norm.numpy()[:, :, :, :P][:, :, upper] == 0)


def test_head_parts_sum_to_the_block_write(case):
    """Σ_h part_h = the attention block's write, in the reference and in the engine's shares."""
    _, _, hs, ref = case
    parts = ref["head_parts"]                                      # (L, P, S, H', d)
    states = ref["states"]                                         # (2L, P, S, d)
    L = parts.shape[0]
    before = torch.stack([states[2 * l - 1] if l else _initial(ref) for l in range(L)])
    delta = states[0::2] - before                                  # what each attention block wrote
    assert float((parts.sum(3) - delta).abs().max() / delta.abs().max()) <= 1e-12
    r = torch.stack([m.double() for m in ref["rec"]["mid"]])
    delta_share = torch.einsum("lpsd,lpd->lps", delta, r / r.pow(2).sum(-1, keepdim=True))
    assert rel(hs.proj.sum(1).numpy(), delta_share.numpy()) <= 1e-5


def _initial(ref):
    P, S, d = ref["states"].shape[1:]
    c = torch.zeros(P, S, d, dtype=torch.float64)
    for p in range(P):
        c[p, p] = ref["rec"]["pre"][0][p].double()
    return c


def test_head_writes_are_the_models_own_head_outputs(case):
    """Summed over sources, head h's part at p is W_o,h times the real o_proj input's head h."""
    kind, lm, hs, ref = case
    H = lm.info["heads"]
    for l, layer in enumerate(lm.hf.model.layers):
        Wo = layer.self_attn.o_proj.weight.detach().double()
        x = ref["rec"]["o_in"][l].double()                         # (P, H·hd) from the forward pass
        hd = x.shape[1] // H
        real = torch.stack([x[:, h * hd:(h + 1) * hd] @ Wo[:, h * hd:(h + 1) * hd].T for h in range(H)])
        assert rel(hs.write_norm[l, :H].numpy(), real.norm(dim=-1).numpy()) <= 1e-5


@pytest.mark.parametrize("kind", ["gqa", "qwen2", "llama-bias"])
def test_grouped_heads_sum_vectors_first(kind):
    lm = tiny_model(kind)
    groups = [0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3]
    ids = tokenize(lm, PROMPT)
    bias = kind != "gqa"
    G = max(groups) + 1
    grouping = torch.tensor(groups + ([G] if bias else []))
    tokens_hs, grouped_hs = engine_heads(lm, groupings=(None, grouping))[0]
    ref = naive_decompose(lm.hf, torch.tensor([ids]))
    member = torch.zeros(ref["S"], G + int(bias), dtype=torch.float64)
    for s, g in enumerate(grouping.tolist()):
        member[s, g] = 1
    want = naive_head_stats(ref, member)
    for name in ("norm", "proj", "write_norm", "write_proj"):
        assert rel(getattr(grouped_hs, name).numpy(), want[name].numpy()) <= 1e-5, name
    # norms of summed vectors, not sums of norms; shares are linear, so they do sum
    assert rel(grouped_hs.norm.numpy(), (tokens_hs.norm.double() @ member).numpy()) > 1e-3
    assert rel(grouped_hs.proj.numpy(), (tokens_hs.proj.double() @ member).numpy()) <= 1e-5


def test_zeroed_head_has_zero_parts():
    """Known answer: with o_proj's columns of head 2 in layer 1 zeroed, its parts are exactly 0."""
    lm = tiny_model("gqa", layers=2, seed=3)
    o = lm.hf.model.layers[1].self_attn.o_proj
    hd = o.in_features // lm.info["heads"]
    with torch.no_grad():
        o.weight[:, 2 * hd:3 * hd] = 0
    (hs,), ids, _ = engine_heads(lm, dtype=torch.float32)
    assert float(hs.norm[1, 2].abs().max()) == 0 and float(hs.proj[1, 2].abs().max()) == 0
    assert float(hs.write_norm[1, 2].abs().max()) == 0
    # ...and only that head: the others in layer 1, and head 2 in layer 0, still write
    assert (hs.write_norm[1, [0, 1, 3]] > 0).all() and (hs.write_norm[0, 2] > 0).all()
    ref = naive_decompose(lm.hf, torch.tensor([ids]))
    assert rel(hs.norm.numpy(), naive_head_stats(ref)["norm"].numpy()) <= 1e-5


def test_heads_off_by_default_and_do_not_change_the_rest():
    lm = tiny_model("qwen2")
    ids = tokenize(lm, PROMPT)
    captured = capture(_nnsight(lm), torch.tensor([ids]))
    layers, unembed = _weights(lm, torch.float64)
    tri = E.triangle(len(ids), True)
    plain = E.decompose_stack(captured, layers, tri, [None], dtype=torch.float64)
    with_heads = E.decompose_stack(captured, layers, tri, [None], dtype=torch.float64, heads=True)
    assert plain.heads is None and len(with_heads.heads) == 1
    for name in ("norm", "delta_norm", "proj"):
        assert torch.equal(getattr(plain.stats[0], name), getattr(with_heads.stats[0], name))
    assert torch.equal(plain.final, with_heads.final)


# --------------------------------------------------------------------- decompose() and the data files


def test_decompose_heads_and_patterns_match_naive():
    from infoflow import decompose
    lm = tiny_model("llama-bias")
    d = decompose(PROMPT, lm, dtype="float64")
    ref = naive_decompose(lm.hf, torch.tensor([d.token_ids.tolist()]))
    want = naive_head_stats(ref)
    assert d.heads.labels == ["0", "1", "2", "3", "o_proj bias"]
    assert rel(d.heads.norm, want["norm"].numpy()) <= 1e-5
    assert rel(d.heads.write_proj, want["write_proj"].numpy()) <= 1e-5
    pat = torch.stack(ref["rec"]["pat"]).numpy()                   # (L, H, P, P) from plain hooks
    assert d.heads.pattern.shape == pat.shape and np.abs(d.heads.pattern - pat).max() <= 1e-6
    assert decompose(PROMPT, lm, heads=False).heads is None


def test_heads_file_round_trip_and_main_file_unchanged(tmp_path):
    """Per-head data goes to its own file; the main file's bytes are those of a build without it."""
    import msgpack

    from infoflow import load
    from infoflow.datafile import content_hash, encode, heads_page_bytes, heads_path, page_bytes
    from infoflow.decompose import decompose_variants
    lm = tiny_model("qwen2")
    groups = [0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3]
    res = decompose_variants(PROMPT, lm, {"tokens": None, "words": "words", "prompt": groups})
    meta = {"id": "t", "title": "t", "text": PROMPT, "tags": [], "note": None, "chat": False}
    with_heads = msgpack.unpackb(encode(res, meta, heads=True, built="x"), raw=False, strict_map_key=False)
    without = msgpack.unpackb(encode(res, meta, heads=False, built="x"), raw=False, strict_map_key=False)
    body, _ = page_bytes(with_heads, meta)
    assert body == page_bytes(without, meta)[0]
    main = tmp_path / f"t.{content_hash(body)}.msgpack"
    main.write_bytes(body)
    heads_path(main).parent.mkdir()
    heads_path(main).write_bytes(heads_page_bytes(with_heads, main.name))
    for name in ("tokens", "words", "prompt"):
        d, want = load(main, name), res[name].heads
        assert d.head_data is not None and callable(d.head_data)       # nothing read yet
        h = d.heads
        assert h.labels == want.labels
        for key, signed in (("norm", False), ("proj", True)):
            got, exact = getattr(h, key), getattr(want, key)
            step = np.abs(exact).max(-1, keepdims=True) / (254 if signed else 510)
            assert np.all(np.abs(got - exact) <= step * 1.0001 + 1e-12), key   # the stated bound
        assert np.array_equal(h.write_norm, want.write_norm) and np.array_equal(h.write_proj, want.write_proj)
        assert np.all(np.abs(h.pattern - want.pattern) <= want.pattern.max(-1, keepdims=True) / 510 + 1e-7)
    # a companion that belongs to another main file is refused
    other = tmp_path / "u.000000000000.msgpack"
    other.write_bytes(body)
    heads_path(other).write_bytes(heads_path(main).read_bytes())
    from infoflow.datafile import DataFileError
    with pytest.raises(DataFileError, match="belongs to"):
        load(other).heads


# --------------------------------------------------------------------- the real model: the gallery notes


def test_default_model_name_movers_and_induction_heads(default_model):
    """What prompts/gallery.toml's notes say about heads, measured again on the real model."""
    from infoflow import decompose
    d = decompose("When Mary and John went to the store, John gave a drink to", default_model, logit_lens=False)
    P, mary = d.n_tokens, d.tokens.index(" Mary")
    assert d.worst_recon_error <= 1e-4
    share = d.heads.proj[:, :, P - 1, mary]                         # (L, H) signed share of ' Mary'
    best = sorted(((share[l, h], l, h) for l in range(d.n_layers) for h in range(9)), reverse=True)[:3]
    assert {(l, h) for _, l, h in best} == {(23, 0), (23, 1), (23, 7)}
    assert abs(share[23].sum() - 0.096) < 0.005 and share[24, 4] < -0.005
    assert d.heads.pattern[23, 0, P - 1, mary] > 0.6 and d.heads.pattern[24, 4, P - 1, mary] > 0.75
    d = decompose("zq blorf vint kex muda. zq blorf vint kex", default_model, logit_lens=False)
    P = d.n_tokens
    target = max(i for i in range(P - 1) if d.tokens[i] == d.tokens[-1]) + 1     # after the earlier 'x'
    att = d.heads.pattern[:, :, P - 1, target]
    assert att[17, 4] > 0.9 and att[18, 6] > 0.9
    assert np.unravel_index(np.argmax(d.heads.proj[:, :, P - 1, target]), att.shape) == (18, 6)

"""Issue 24, items 5 and 6 in Python: the vocabulary-mean logit's parts at the last position
(`logit_mean`) and the last position's logit lens of the top-k predictions and the declared
target (`lens_last`): computed against a naive full-vocabulary pass, written, read back, and
refused when a file declares sizes that do not fit."""
from __future__ import annotations

import copy

import msgpack
import numpy as np
import pytest
import torch

from infoflow import datafile
from infoflow.datafile import DataFileError, check_document
from infoflow.decompose import decompose_variants
from tests.conftest import tiny_model

PROMPT = "When Mary and John went"
META = {"id": "t", "title": "t", "text": PROMPT, "tags": [], "note": None, "chat": False}


@pytest.fixture(scope="module")
def result():
    lm = tiny_model("llama-bias", layers=3, seed=1)
    out = decompose_variants(PROMPT, lm, {"tokens": None, "words": "words"}, top_k=5, lens_target=7)
    return lm, out


def naive_lens(lm, text, token_ids):
    """Probability and rank of each token after every sublayer at the last position, through
    the model's own final norm and head (hooks on the real modules), float64."""
    hf = lm.hf
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    rows = []
    hooks = []
    for layer in hf.model.layers:
        hooks.append(layer.post_attention_layernorm.register_forward_hook(
            lambda m, inp, out: rows.append(("mid", inp[0][0, -1].detach().double()))))
        hooks.append(layer.register_forward_hook(
            lambda m, inp, out: rows.append(("out", (out[0] if isinstance(out, tuple) else out)[0, -1].detach().double()))))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for h in hooks:
            h.remove()
    assert [k for k, _ in rows] == ["mid", "out"] * len(hf.model.layers)
    norm, head = hf.model.norm, hf.lm_head
    with torch.no_grad():
        return _lens_of(torch.stack([r for _, r in rows]), norm, head, token_ids)


def _lens_of(x, norm, head, token_ids):
    xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
    logits = xn @ head.weight.double().T + (head.bias.double() if head.bias is not None else 0)
    lp = logits - torch.logsumexp(logits, -1, keepdim=True)
    t = torch.tensor(token_ids)
    probs = lp[:, t].exp().T.numpy()
    ranks = (1 + (logits.unsqueeze(1) > logits[:, t].unsqueeze(2)).sum(-1)).T.numpy()
    return probs, ranks


def test_lens_track_matches_a_naive_pass(result):
    lm, out = result
    d = out["tokens"]
    L = d.n_layers
    assert d.lens_track_ids[:5].tolist() == d.pred_ids[-1].tolist()
    assert d.lens_track_ids[d.lens_target] == 7
    probs, ranks = naive_lens(lm, PROMPT, d.lens_track_ids.tolist())
    np.testing.assert_allclose(d.lens_track_probs.reshape(-1, 2 * L), probs, atol=1e-5, rtol=1e-4)
    assert (d.lens_track_ranks.reshape(-1, 2 * L) == ranks).all()
    # after the last sublayer it is the model's own prediction: ranks 1..k, the predictions' probs
    assert d.lens_track_ranks[:5, -1, 1].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(d.lens_track_probs[:5, -1, 1], d.pred_probs[-1], rtol=1e-5)
    # rank 1 exactly where the stored lens's top token is that token
    assert ((d.lens_track_ranks[0] == 1) == (d.lens_ids[:, :, -1, 0] == d.lens_track_ids[0])).all()


def test_logit_mean_is_the_demeaned_baseline(result):
    _, out = result
    for d in out.values():
        assert d.logit_mean_last.shape == (len(d.sources),)
        np.testing.assert_allclose(d.logit_attr[-1, 0] - d.logit_mean_last, d.top_attr_demeaned[-1], atol=1e-6)


def test_written_and_read_back(result, tmp_path):
    _, out = result
    path = tmp_path / "t.msgpack"
    path.write_bytes(datafile.encode(out, META))
    back = datafile.load(path)
    d = out["tokens"]
    assert back.lens_target == d.lens_target
    assert [back.token_text[i] for i in back.lens_track_ids] == [d.token_text[i] for i in d.lens_track_ids]
    np.testing.assert_array_equal(back.lens_track_probs, d.lens_track_probs)      # float32, unquantized
    np.testing.assert_array_equal(back.lens_track_ranks, d.lens_track_ranks)
    np.testing.assert_array_equal(back.logit_mean_last, d.logit_mean_last)
    assert [s for s, _ in back.top_sources()] == [s for s, _ in d.top_sources()]
    words = datafile.load(path, "words")
    np.testing.assert_array_equal(words.logit_mean_last, out["words"].logit_mean_last)


def test_files_without_them_still_load(result, tmp_path):
    _, out = result
    doc = msgpack.unpackb(datafile.encode(out, META), raw=False)
    del doc["lens_last"]
    for v in doc["variants"]:
        v.pop("logit_mean", None)
    path = tmp_path / "old.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    back = datafile.load(path)
    assert back.lens_track_ids is None and back.logit_mean_last is None and back.top_sources() == []


def _crafted(doc, edit):
    bad = copy.deepcopy(doc)
    edit(bad)
    return bad


def _array(shape, dtype="f32"):
    return datafile.encode_array(np.zeros(shape), dtype)


@pytest.mark.parametrize("what, edit, message", [
    ("too many tokens", lambda d: d["lens_last"].update(ids=_array([7], "u16"), probs=_array([7, 3, 2]),
                                                         ranks=_array([7, 3, 2], "u32")), "lens_last.ids"),
    ("probs of another depth", lambda d: d["lens_last"].update(probs=_array([6, 4, 2])), "lens_last.probs"),
    ("ranks too large", lambda d: d["lens_last"].update(ranks={**_array([6, 3, 2], "u32"),
                                                                 "shape": [6, 1 << 20, 2]}), "lens_last.ranks"),
    ("a 2-d ids", lambda d: d["lens_last"].update(ids=_array([2, 3], "u16")), "lens_last.ids"),
    ("target out of range", lambda d: d["lens_last"].update(target=6), "lens_last.target"),
    ("target not a count", lambda d: d["lens_last"].update(target=True), "lens_last.target"),
    ("not a map", lambda d: d.update(lens_last=[1, 2]), "lens_last"),
    ("logit_mean of another size", lambda d: d["variants"][0].update(logit_mean=_array([99])), "logit_mean"),
])
def test_checker_refuses_crafted_sizes(result, what, edit, message):
    _, out = result
    doc = msgpack.unpackb(datafile.encode(out, META), raw=False)
    check_document(doc)
    with pytest.raises(DataFileError, match=message):
        check_document(_crafted(doc, edit))

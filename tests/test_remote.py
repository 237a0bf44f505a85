"""The in-trace decomposition (what --remote sends to NDIF), run locally with remote=False, and
the client's answers to a server that is unreachable, is not NDIF, errors, hangs up or goes
silent (fake_ndif.py). The real server stack is `make ndif-check` (docs/ndif.md)."""
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infoflow import decompose
from infoflow.cli import _remote_model, main
from infoflow.remote import RemoteError, decompose_remote
from infoflow.trace import wrap

from .conftest import tiny_model
from .fake_ndif import FakeNDIF, closed_port


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


@pytest.mark.parametrize("kind", ["gqa", "qwen2"])   # qwen2 has a bias source, appended in-trace
def test_in_trace_summary_with_groups_matches_local_engine(kind):
    lm = tiny_model(kind)
    plain = decompose("in trace with groups", lm)
    P = plain.n_tokens
    groups = [min(p // 2, 2) for p in range(P)]
    local = decompose("in trace with groups", lm, groups=groups)
    summary = decompose_remote(wrap(lm.hf), torch.tensor([plain.token_ids.tolist()]),
                               remote=False, groups=local.groups.tolist())
    G = local.attn_norm.shape[-1]
    assert summary["norm"].shape[-1] == G < P
    assert np.allclose(summary["norm"][:, 1].numpy(), local.mlp_norm, rtol=1e-5, atol=1e-6)
    assert np.allclose(summary["delta_norm"][:, 0].numpy(), local.attn_delta_norm, rtol=1e-5, atol=1e-6)
    assert np.allclose(summary["logit_attr"].numpy(), local.logit_attr, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def meta_model():
    """The default model as nnsight's meta wrapper: config and tokenizer, no weights."""
    from infoflow.model import converted_default_model

    return _remote_model(str(converted_default_model()))


IDS = torch.tensor([[1, 2, 3]])


def test_public_host_without_key_says_what_to_do(monkeypatch, meta_model):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.delenv("NDIF_HOST", raising=False)
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        decompose_remote(meta_model, IDS, host="https://api.ndif.us")


def test_own_host_needs_no_key_and_unreachable_is_one_line(monkeypatch, meta_model):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(RemoteError) as e:
        decompose_remote(meta_model, IDS, host=host, timeout=5)
    assert str(e.value).startswith(f"could not reach NDIF at {host}")
    assert "\n" not in str(e.value)


def test_host_from_environment(monkeypatch, meta_model):
    host = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("NDIF_HOST", host)
    with pytest.raises(RemoteError, match=f"could not reach NDIF at {host}"):
        decompose_remote(meta_model, IDS, timeout=5)


def test_host_must_be_a_url(meta_model):
    with pytest.raises(RemoteError, match="must be a URL"):
        decompose_remote(meta_model, IDS, host="127.0.0.1:8001")


@pytest.mark.parametrize("scenario, message", [
    ("not-ndif", "did not accept NDIF's websocket (HTTP 404)"),
    ("error", "failed the request for nnsight.modeling.transformers.TransformersModel:"),
    ("close", "closed the connection mid-request"),
    ("other-model", "does not serve /"),
    ("sandbox", "needs a trusted key"),
])
def test_server_failures_are_one_line(meta_model, scenario, message):
    with FakeNDIF(scenario) as server, pytest.raises(RemoteError) as e:
        decompose_remote(meta_model, IDS, host=server.url, timeout=10)
    text = str(e.value)
    assert message in text and "\n" not in text and "Traceback" not in text
    if scenario in ("error", "other-model"):
        assert text.endswith("RuntimeError: the model ran out of memory")
    if scenario == "other-model":
        assert "SmolLM2-135M-Instruct-f32 (it serves org/other)" in text


def test_silent_server_times_out_with_a_message(meta_model):
    t0 = time.perf_counter()
    with FakeNDIF("silent") as server, pytest.raises(RemoteError, match="sent nothing for 1 s"):
        decompose_remote(meta_model, IDS, host=server.url, timeout=1)
    assert time.perf_counter() - t0 < 8


def test_cli_remote_unreachable_is_one_line_no_traceback(monkeypatch, meta_model):
    from infoflow.model import converted_default_model

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    host = f"http://127.0.0.1:{closed_port()}"
    r = CliRunner().invoke(main, ["decompose", "The capital of France is", "--remote", "--model",
                                  str(converted_default_model()), "--ndif-host", host, "--timeout", "5"])
    assert r.exit_code == 1, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: could not reach NDIF at {host} ")
    assert "Traceback" not in r.output

"""Run the decomposition *inside* an nnsight trace, so it can execute on NDIF.

`summarize_in_trace` is called in the body of a trace: it reads the frozen quantities and the
weights through nnsight's envoys, runs the same engine functions as a local decomposition,
and returns only small tensors (norms, shares, top-k), so kilobytes come back from a remote
run, not P²·d tensors. The capture is trace.walk, the same one the local path saves. With
remote=True, the source of arch, weights, engine, logits and trace travels with the request (`nnsight.register`). No NDIF server is reachable from our test machines, so the tests run
exactly this function locally (remote=False) and compare it with `infoflow.decompose`.
"""
from __future__ import annotations

import os

import torch

from . import arch, engine, trace, weights
from . import logits as unembedding


class RemoteError(RuntimeError):
    """Remote execution could not start; the message says what to set up."""


def summarize_in_trace(nn_model, top_k: int = 5, dtype=torch.float32) -> dict:
    """Body of a trace: capture, decompose, reduce. Returns a dict of small tensors."""
    captured = trace.walk(nn_model, arch.recipe_for(nn_model.config))
    final, logits = captured.resid_final, captured.logits
    with torch.no_grad():
        layers, unembed = weights.extract_weights(nn_model, dtype=dtype, device=final.device)
        bias = weights.has_bias_source(layers, unembed)
        tri = engine.triangle(final.shape[0], bias, device=final.device)
        result = engine.decompose_stack(captured, layers, tri, [None], dtype=dtype)
        st = result.stats[0]
        lg = logits.to(dtype)
        top_logits, pred_ids = lg.topk(top_k, dim=-1)
        scale = unembedding.final_scale(final.to(dtype), unembed)
        attr = unembedding.logit_attribution(result.final, tri, scale, unembed, pred_ids, None)
        return {"norm": st.norm, "delta_norm": st.delta_norm, "proj": st.proj,
                "recon_error": result.recon_error, "pred_ids": pred_ids.cpu(),
                "pred_logits": top_logits.cpu(), "logit_attr": attr.cpu()}


def decompose_remote(nn_model, input_ids: torch.Tensor, *, remote: bool = True, top_k: int = 5) -> dict:
    """One traced pass with the decomposition inside it; only the summary is saved."""
    import nnsight

    if remote:
        key = os.environ.get("NDIF_API_KEY")
        if not key:
            raise RemoteError("--remote needs an NDIF API key: set NDIF_API_KEY (from your NDIF "
                              "account page), or run locally without --remote.")
        nnsight.CONFIG.set_default_api_key(key)
        for module in (arch, weights, engine, unembedding, trace):   # everything the in-trace code calls
            nnsight.register(module)
    try:
        with nn_model.trace(input_ids, remote=remote):
            summary = nnsight.save(summarize_in_trace(nn_model, top_k))
    except (ConnectionError, OSError) as e:
        raise RemoteError(f"could not reach NDIF ({e}); check the network, or run without --remote.") from e
    return summary

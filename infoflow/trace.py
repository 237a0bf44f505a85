"""Run the model once under nnsight and freeze what the decomposition needs."""
from __future__ import annotations

import torch
from nnsight import NNsight

from .engine import Captured


def wrap(hf) -> NNsight:
    return NNsight(hf)


def capture(nn_model: NNsight, input_ids: torch.Tensor) -> Captured:
    """One forward pass; input_ids (1, P). Modules are read in execution order, as nnsight requires."""
    pre, pat, mid, gates = [], [], [], []
    with torch.no_grad(), nn_model.trace(input_ids):
        for layer in nn_model.model.layers:
            pre.append(layer.input_layernorm.input[0].save())
            pat.append(layer.self_attn.output[1][0].save())
            mid.append(layer.post_attention_layernorm.input[0].save())
            gates.append(layer.mlp.act_fn.output[0].save())
        final = nn_model.model.norm.input[0].save()
        logits = nn_model.lm_head.output[0].save()
    if pat[0] is None:
        raise RuntimeError("The attention module returned no pattern; load the model with "
                           "attn_implementation='eager'.")
    return Captured(resid_pre=pre, patterns=pat, resid_mid=mid, gates=gates,
                    resid_final=final, logits=logits)

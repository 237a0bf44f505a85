"""Run the model once under nnsight and freeze what the decomposition needs.

`walk` is the one capture: it reads, inside a trace, every quantity the model's recipe
(arch.py) needs, in execution order, as nnsight requires. The local path saves what it
reads (`capture`); the NDIF path (remote.py) uses it unsaved inside the same trace, so this
module, arch, weights, engine and logits are what `nnsight.register` ships (remote.py).
"""
from __future__ import annotations

import nnsight
import torch
from nnsight import NNsight

from . import arch
from .engine import Captured


def wrap(hf) -> NNsight:
    return NNsight(hf)


def walk(nn_model, recipe: arch.Recipe, keep=lambda x: x) -> Captured:
    """Body of a trace: every frozen quantity, each passed through `keep` (e.g. .save()).

    Per layer, in execution order: the residual entering it, the attention pattern, the
    attention block's output before its post-norm (if any), the residual after attention
    (the MLP pre-norm's input, or the MLP's input where there is none), the frozen gate, and
    the MLP's output before its post-norm (if any). Then the final norm's input and the logits.
    """
    pre, pat, attn_out, mid, gates, mlp_out = [], [], [], [], [], []
    for layer in nn_model.model.layers:
        pre.append(keep(layer.input[0]))
        pat.append(keep(layer.self_attn.output[1][0]))
        if recipe.attn_post_norm:
            attn_out.append(keep(arch.get(layer, recipe.attn_post_norm).input[0]))
        mid_reader = arch.get(layer, recipe.mlp_pre_norm) if recipe.mlp_pre_norm else layer.mlp
        mid.append(keep(mid_reader.input[0]))
        gates.append(keep(arch.get(layer, recipe.gate_act).output[0]))
        if recipe.mlp_post_norm:
            mlp_out.append(keep(arch.get(layer, recipe.mlp_post_norm).input[0]))
    final = keep(arch.get(nn_model, recipe.final_norm).input[0])
    logits = keep(nn_model.lm_head.output[0])
    return Captured(resid_pre=pre, patterns=pat, resid_mid=mid, gates=gates, resid_final=final,
                    logits=logits, attn_out=attn_out or None, mlp_out=mlp_out or None)


def capture(nn_model: NNsight, input_ids: torch.Tensor) -> Captured:
    """One forward pass; input_ids (1, P)."""
    recipe = arch.recipe_for(nn_model.config)
    with torch.no_grad(), nn_model.trace(input_ids):
        captured = nnsight.save(walk(nn_model, recipe, keep=nnsight.save))
    if captured.patterns[0] is None:
        raise RuntimeError("The attention module returned no pattern; load the model with "
                           "attn_implementation='eager'.")
    return captured

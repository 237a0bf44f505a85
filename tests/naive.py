"""An independent, deliberately naive implementation of the same decomposition.

It shares no code with infoflow: its own forward hooks, float64, dense (P, S, d)
contributions, and a loop over query positions that recomputes every value vector,
the way the original research code did. Slow, and obviously right.
"""
from __future__ import annotations

import torch


def capture_with_hooks(hf, input_ids):
    """Forward once with plain PyTorch hooks; return per-layer frozen quantities."""
    rec = {"pre": [], "mid": [], "pat": [], "gate": [], "o_in": []}
    hooks = []
    for layer in hf.model.layers:
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(     # the heads, side by side
            lambda m, a: rec["o_in"].append(a[0][0].detach())))
        hooks.append(layer.input_layernorm.register_forward_pre_hook(
            lambda m, a: rec["pre"].append(a[0][0].detach())))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda m, a: rec["mid"].append(a[0][0].detach())))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, a, out: rec["pat"].append(out[1][0].detach())))
        hooks.append(layer.mlp.act_fn.register_forward_hook(
            lambda m, a, out: rec["gate"].append(out[0].detach())))
    hooks.append(hf.model.norm.register_forward_pre_hook(
        lambda m, a: rec.__setitem__("final", a[0][0].detach())))
    try:
        with torch.no_grad():
            rec["logits"] = hf(input_ids).logits[0].detach()
    finally:
        for h in hooks:
            h.remove()
    return rec


def _b(linear):
    return None if linear.bias is None else linear.bias.detach().double()


@torch.no_grad()
def naive_decompose(hf, input_ids, k=5):
    """Dense float64 contributions c[p, s] and per-sublayer stats, by loops over queries."""
    f64 = torch.float64
    rec = capture_with_hooks(hf, input_ids)
    cfg = hf.config
    P = input_ids.shape[1]
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    rep = H // KV
    biased = any(m.bias is not None for layer in hf.model.layers
                 for m in (layer.self_attn.v_proj, layer.self_attn.o_proj,
                           layer.mlp.up_proj, layer.mlp.down_proj))
    S = P + 1 if biased else P
    d = cfg.hidden_size

    c = torch.zeros(P, S, d, dtype=f64)
    for p in range(P):
        c[p, p] = rec["pre"][0][p].double()

    stats = {name: [] for name in ("attn_norm", "attn_delta", "attn_proj",
                                   "mlp_norm", "mlp_delta", "mlp_proj", "states")}
    # Per query head h: part[p, s, h] = o_proj's columns of head h times that head's mixed
    # values; o_proj's bias, when there is one, is one more "head" (index H), bias source only.
    n_parts = H + (1 if att0_bias(hf) else 0)
    head_parts = []                                    # L × (P, S, H', d)
    for l, layer in enumerate(hf.model.layers):
        att, mlp = layer.self_attn, layer.mlp
        hd = att.v_proj.out_features // KV
        Wv, bv = att.v_proj.weight.double(), _b(att.v_proj)
        Wo, bo = att.o_proj.weight.double(), _b(att.o_proj)
        ln1 = layer.input_layernorm.weight.double()
        x = rec["pre"][l].double()
        rms1 = torch.sqrt(x.pow(2).mean(-1) + layer.input_layernorm.variance_epsilon)
        A = rec["pat"][l].double()                     # (H, P, P)

        delta = torch.zeros_like(c)
        parts = torch.zeros(P, S, n_parts, d, dtype=f64)
        for p in range(P):                             # every query position...
            for s in range(S):
                heads = []
                for h in range(H):
                    g = h // rep
                    acc = torch.zeros(hd, dtype=f64)
                    for t in range(P):                 # ...recomputes every value it reads
                        v = Wv[g * hd:(g + 1) * hd] @ (ln1 * c[t, s] / rms1[t])
                        if bv is not None and s == P:
                            v = v + bv[g * hd:(g + 1) * hd]
                        acc += A[h, p, t] * v
                    heads.append(acc)
                out = Wo @ torch.cat(heads)
                if bo is not None and s == P:
                    out = out + bo
                    parts[p, s, H] = bo
                delta[p, s] = out
                for h in range(H):
                    parts[p, s, h] = Wo[:, h * hd:(h + 1) * hd] @ heads[h]
        head_parts.append(parts)
        c = c + delta
        r = rec["mid"][l].double()
        _stats(stats, "attn", c, delta, r)

        Wup, bup = mlp.up_proj.weight.double(), _b(mlp.up_proj)
        Wd, bd = mlp.down_proj.weight.double(), _b(mlp.down_proj)
        ln2 = layer.post_attention_layernorm.weight.double()
        rms2 = torch.sqrt(r.pow(2).mean(-1) + layer.post_attention_layernorm.variance_epsilon)
        gate = rec["gate"][l].double()
        delta = torch.zeros_like(c)
        for p in range(P):
            for s in range(S):
                u = Wup @ (ln2 * c[p, s] / rms2[p])
                if bup is not None and s == P:
                    u = u + bup
                out = Wd @ (gate[p] * u)
                if bd is not None and s == P:
                    out = out + bd
                delta[p, s] = out
        c = c + delta
        r = rec["pre"][l + 1].double() if l + 1 < len(hf.model.layers) else rec["final"].double()
        _stats(stats, "mlp", c, delta, r)

    # Final norm frozen; per-source logits of the top-k tokens.
    fin = rec["final"].double()
    wf = hf.model.norm.weight.double()
    rmsf = torch.sqrt(fin.pow(2).mean(-1) + hf.model.norm.variance_epsilon)
    WU = hf.lm_head.weight.double()
    logits = rec["logits"].double()
    top_ids = logits.topk(k, dim=-1).indices
    attr = torch.zeros(P, k, S, dtype=f64)
    for p in range(P):
        for j in range(k):
            for s in range(S):
                attr[p, j, s] = WU[top_ids[p, j]] @ (wf * c[p, s] / rmsf[p])
    out = {key: torch.stack(v) for key, v in stats.items()}
    out.update(final=c, logit_attr=attr, top_ids=top_ids, logits=logits, rec=rec, S=S,
               head_parts=torch.stack(head_parts))      # (L, P, S, H', d)
    return out


def att0_bias(hf):
    return hf.model.layers[0].self_attn.o_proj.bias is not None


def naive_head_stats(ref, member=None):
    """Per-head norms and shares from the dense parts, optionally summed within groups
    (member (S, G) 0/1) first. r is the real residual after attention.
    -> norm, proj (L, H', P, G); write_norm, write_proj (L, H', P): all sources together."""
    parts = ref["head_parts"]                              # (L, P, S, H', d)
    if member is not None:
        parts = torch.einsum("lpshd,sg->lpghd", parts, member)
    r = torch.stack([m.double() for m in ref["rec"]["mid"]])   # (L, P, d)
    unit = r / r.pow(2).sum(-1, keepdim=True)
    norm = parts.norm(dim=-1).permute(0, 3, 1, 2)
    proj = torch.einsum("lpghd,lpd->lhpg", parts, unit)
    whole = parts.sum(2)                                   # (L, P, H', d)
    return dict(norm=norm, proj=proj, write_norm=whole.norm(dim=-1).transpose(1, 2),
                write_proj=torch.einsum("lphd,lpd->lhp", whole, unit), whole=whole)


def _stats(stats, kind, c, delta, r):
    stats[f"{kind}_norm"].append(c.norm(dim=-1))
    stats[f"{kind}_delta"].append(delta.norm(dim=-1))
    stats[f"{kind}_proj"].append((c * r[:, None, :]).sum(-1) / r.pow(2).sum(-1)[:, None])
    stats["states"].append(c.clone())

"""An independent, deliberately naive implementation of the same decomposition.

It shares no code with infoflow: its own forward hooks, float64, dense (P, S, d)
contributions, and a loop over query positions that recomputes every value vector,
the way the original research code did. Slow, and obviously right.
"""
from __future__ import annotations

import torch


# Where each family's RMSNorms sit, written out here independently of infoflow/arch.py:
# (before attention, after attention, before the MLP, after the MLP, weight is 1 + w).
LAYOUT = {
    "llama": ("input_layernorm", None, "post_attention_layernorm", None, False),
    "mistral": ("input_layernorm", None, "post_attention_layernorm", None, False),
    "qwen2": ("input_layernorm", None, "post_attention_layernorm", None, False),
    "qwen3": ("input_layernorm", None, "post_attention_layernorm", None, False),
    "phi3": ("input_layernorm", None, "post_attention_layernorm", None, False),
    "gemma3_text": ("input_layernorm", "post_attention_layernorm",
                    "pre_feedforward_layernorm", "post_feedforward_layernorm", True),
    "olmo2": (None, "post_attention_layernorm", None, "post_feedforward_layernorm", False),
}


def capture_with_hooks(hf, input_ids):
    """Forward once with plain PyTorch hooks; return per-layer frozen quantities:
    pre (layer input), mid (residual after attention), attn_out / mlp_out (what a post-norm
    normalizes), pat, gate, o_in (o_proj's input), final (final norm input), logits."""
    rec = {"pre": [], "mid": [], "pat": [], "gate": [], "o_in": [], "attn_out": [], "mlp_out": []}
    _, post1, pre2, post2, _ = LAYOUT[hf.config.model_type]

    def keep(key):
        return lambda m, a: rec[key].append(a[0][0].detach())

    hooks = []
    for layer in hf.model.layers:
        hooks.append(layer.register_forward_pre_hook(keep("pre")))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(keep("o_in")))  # the heads, side by side
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, a, out: rec["pat"].append(out[1][0].detach())))
        if post1:
            hooks.append(getattr(layer, post1).register_forward_pre_hook(keep("attn_out")))
        # the residual after attention: what the MLP's pre-norm reads, or the MLP itself
        hooks.append((getattr(layer, pre2) if pre2 else layer.mlp).register_forward_pre_hook(keep("mid")))
        act = layer.mlp.act_fn if hasattr(layer.mlp, "act_fn") else layer.mlp.activation_fn
        hooks.append(act.register_forward_hook(lambda m, a, out: rec["gate"].append(out[0].detach())))
        if post2:
            hooks.append(getattr(layer, post2).register_forward_pre_hook(keep("mlp_out")))
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


def value_and_up(layer, cfg):
    """(v_proj weight, bias), (up_proj weight, bias); Phi-3 fuses them with q, k and the gate."""
    att, mlp = layer.self_attn, layer.mlp
    if hasattr(att, "qkv_proj"):                # rows: [q | k | v]
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        v0 = (cfg.num_attention_heads + cfg.num_key_value_heads) * hd
        W, b = att.qkv_proj.weight.double(), _b(att.qkv_proj)
        v = (W[v0:], None if b is None else b[v0:])
    else:
        v = (att.v_proj.weight.double(), _b(att.v_proj))
    if hasattr(mlp, "gate_up_proj"):            # rows: [gate | up]
        W, b = mlp.gate_up_proj.weight.double(), _b(mlp.gate_up_proj)
        n = W.shape[0] // 2
        u = (W[n:], None if b is None else b[n:])
    else:
        u = (mlp.up_proj.weight.double(), _b(mlp.up_proj))
    return v, u


def rms_norm(norm, one_plus):
    """x -> n ⊙ x / rms[p] with the rms taken from `frozen` (P, d): the norm, frozen."""
    w = norm.weight.double() + (1.0 if one_plus else 0.0)
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps

    def apply(x, frozen, p):
        return w * x / torch.sqrt(frozen[p].double().pow(2).mean() + eps)
    return apply


def identity(x, frozen, p):
    return x


@torch.no_grad()
def naive_decompose(hf, input_ids, k=5):
    """Dense float64 contributions c[p, s] and per-sublayer stats, by loops over queries."""
    f64 = torch.float64
    rec = capture_with_hooks(hf, input_ids)
    cfg = hf.config
    pre1_name, post1_name, pre2_name, post2_name, one_plus = LAYOUT[cfg.model_type]
    P = input_ids.shape[1]
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    rep = H // KV
    biased = any(b is not None for layer in hf.model.layers
                 for b in (value_and_up(layer, cfg)[0][1], value_and_up(layer, cfg)[1][1],
                           layer.self_attn.o_proj.bias, layer.mlp.down_proj.bias))
    S = P + 1 if biased else P
    d = cfg.hidden_size

    def norm(layer, name):
        return identity if name is None else rms_norm(getattr(layer, name), one_plus)

    c = torch.zeros(P, S, d, dtype=f64)
    for p in range(P):
        c[p, p] = rec["pre"][0][p].double()

    stats = {name: [] for name in ("attn_norm", "attn_delta", "attn_proj",
                                   "mlp_norm", "mlp_delta", "mlp_proj", "states")}
    # Per query head h: part[p, s, h] = o_proj's columns of head h times that head's mixed
    # values (then the post-norm, if any); o_proj's bias, when there is one, is one more
    # "head" (index H), bias source only.
    n_parts = H + (1 if att0_bias(hf) else 0)
    head_parts = []                                    # L × (P, S, H', d)
    for l, layer in enumerate(hf.model.layers):
        att, mlp = layer.self_attn, layer.mlp
        (Wv, bv), (Wup, bup) = value_and_up(layer, cfg)
        hd = Wv.shape[0] // KV
        Wo, bo = att.o_proj.weight.double(), _b(att.o_proj)
        pre1, post1 = norm(layer, pre1_name), norm(layer, post1_name)
        x = rec["pre"][l]
        y = rec["attn_out"][l] if post1_name else None       # what the post-norm normalizes
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
                        v = Wv[g * hd:(g + 1) * hd] @ pre1(c[t, s], x, t)
                        if bv is not None and s == P:
                            v = v + bv[g * hd:(g + 1) * hd]
                        acc += A[h, p, t] * v
                    heads.append(acc)
                out = Wo @ torch.cat(heads)
                if bo is not None and s == P:
                    out = out + bo
                    parts[p, s, H] = post1(bo, y, p)
                delta[p, s] = post1(out, y, p)
                for h in range(H):
                    parts[p, s, h] = post1(Wo[:, h * hd:(h + 1) * hd] @ heads[h], y, p)
        head_parts.append(parts)
        c = c + delta
        r = rec["mid"][l].double()
        _stats(stats, "attn", c, delta, r)

        Wd, bd = mlp.down_proj.weight.double(), _b(mlp.down_proj)
        pre2, post2 = norm(layer, pre2_name), norm(layer, post2_name)
        y = rec["mlp_out"][l] if post2_name else None
        gate = rec["gate"][l].double()
        delta = torch.zeros_like(c)
        for p in range(P):
            for s in range(S):
                u = Wup @ pre2(c[p, s], r, p)
                if bup is not None and s == P:
                    u = u + bup
                out = Wd @ (gate[p] * u)
                if bd is not None and s == P:
                    out = out + bd
                delta[p, s] = post2(out, y, p)
        c = c + delta
        r = rec["pre"][l + 1].double() if l + 1 < len(hf.model.layers) else rec["final"].double()
        _stats(stats, "mlp", c, delta, r)

    # Final norm frozen; per-source logits of the top-k tokens.
    fin = rec["final"]
    final_norm = rms_norm(hf.model.norm, one_plus)
    WU = hf.lm_head.weight.double()
    logits = rec["logits"].double()
    top_ids = logits.topk(k, dim=-1).indices
    attr = torch.zeros(P, k, S, dtype=f64)
    for p in range(P):
        for j in range(k):
            for s in range(S):
                attr[p, j, s] = WU[top_ids[p, j]] @ final_norm(c[p, s], fin, p)
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


# ----------------------------------------------------------------------------- attribution graph


def _heads_split(layer, cfg):
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    (Wv, bv), _ = value_and_up(layer, cfg)
    hd = Wv.shape[0] // KV
    return H, KV, hd


def naive_graph(hf, input_ids, token, contrast, position):
    """Node effects of T = logit(token) − logit(contrast) (or − the mean logit) at `position`,
    by float64 autograd through the frozen model written out by hand: a zero leaf is added after
    every head's, MLP's and o_proj bias's write at every position, and after the embeddings;
    g_b is T's gradient at b's leaf and effect(b) = ⟨g_b, w_b⟩. Also returns a function that
    applies a node's frozen map J_b (no biases) to a residual field, for edges."""
    f64 = torch.float64
    rec = capture_with_hooks(hf, input_ids)
    cfg = hf.config
    pre1_name, post1_name, pre2_name, post2_name, one_plus = LAYOUT[cfg.model_type]
    P = input_ids.shape[1]

    def norm(layer, name):
        return identity if name is None else rms_norm(getattr(layer, name), one_plus)

    def per_pos(fn, X, frozen):
        return torch.stack([fn(X[p], frozen, p) for p in range(P)])

    emb = rec["pre"][0].double().clone().requires_grad_(True)
    x = emb
    leaves, writes = {}, {}
    for l, layer in enumerate(hf.model.layers):
        att, mlp = layer.self_attn, layer.mlp
        H, KV, hd = _heads_split(layer, cfg)
        (Wv, bv), (Wup, bup) = value_and_up(layer, cfg)
        Wo, bo = att.o_proj.weight.double(), _b(att.o_proj)
        pre1, post1 = norm(layer, pre1_name), norm(layer, post1_name)
        y1 = rec["attn_out"][l] if post1_name else None
        A = rec["pat"][l].double()
        V = per_pos(pre1, x, rec["pre"][l]) @ Wv.T + (0 if bv is None else bv)      # (P, d_kv)
        x_mid = x
        for h in range(H):
            g = h // (H // KV)
            O = A[h] @ V[:, g * hd:(g + 1) * hd]                                    # (P, hd)
            w = per_pos(post1, O @ Wo[:, h * hd:(h + 1) * hd].T, y1)                # (P, d)
            leaf = torch.zeros(P, w.shape[1], dtype=f64, requires_grad=True)
            leaves[("head", l, h)], writes[("head", l, h)] = leaf, w.detach()
            x_mid = x_mid + w + leaf
        if bo is not None:
            w = per_pos(post1, bo.expand(P, -1), y1)
            leaf = torch.zeros_like(w, requires_grad=True)
            leaves[("head", l, H)], writes[("head", l, H)] = leaf, w.detach()
            x_mid = x_mid + w + leaf
        pre2, post2 = norm(layer, pre2_name), norm(layer, post2_name)
        y2 = rec["mlp_out"][l] if post2_name else None
        Wd, bd = mlp.down_proj.weight.double(), _b(mlp.down_proj)
        u = per_pos(pre2, x_mid, rec["mid"][l]) @ Wup.T + (0 if bup is None else bup)
        out = (rec["gate"][l].double() * u) @ Wd.T + (0 if bd is None else bd)
        w = per_pos(post2, out, y2)
        leaf = torch.zeros_like(w, requires_grad=True)
        leaves[("mlp", l)], writes[("mlp", l)] = leaf, w.detach()
        x = x_mid + w + leaf
    fn = rms_norm(hf.model.norm, one_plus)(x[position], rec["final"], position)
    WU = hf.lm_head.weight.double()
    u = WU[token] - (WU[contrast] if contrast is not None else WU.mean(0))
    T = fn @ u
    bU = _b(hf.lm_head)
    if bU is not None:
        T = T + bU[token] - (bU[contrast] if contrast is not None else bU.mean())
    T.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    effect = {k: (grads[k] * writes[k]).sum(-1) for k in leaves}                # each (P,)
    effect["embed"] = (emb.grad * emb.detach()).sum(-1)
    logits = rec["logits"].double()[position]
    real = logits[token] - (logits[contrast] if contrast is not None else logits.mean())

    def J(kind, l, h, q, field):
        """Node (kind, l, h, q)'s frozen map on a residual field (P, d), no biases: (d,)."""
        layer = hf.model.layers[l]
        H, KV, hd = _heads_split(layer, cfg)
        (Wv, _), (Wup, _) = value_and_up(layer, cfg)
        if kind == "head":
            if h == H:
                return torch.zeros(field.shape[1], dtype=f64)
            g = h // (H // KV)
            V = per_pos(norm(layer, pre1_name), field, rec["pre"][l]) @ Wv[g * hd:(g + 1) * hd].T
            o = rec["pat"][l].double()[h, q] @ V
            w = layer.self_attn.o_proj.weight.double()[:, h * hd:(h + 1) * hd] @ o
            return norm(layer, post1_name)(w, rec["attn_out"][l] if post1_name else None, q)
        u = norm(layer, pre2_name)(field[q], rec["mid"][l], q) @ Wup.T
        w = layer.mlp.down_proj.weight.double() @ (rec["gate"][l].double()[q] * u)
        return norm(layer, post2_name)(w, rec["mlp_out"][l] if post2_name else None, q)

    return dict(T=float(T.detach()), real=float(real), effect=effect, grads=grads, writes=writes,
                emb=emb.detach(), embed_grad=emb.grad, J=J)

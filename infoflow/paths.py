"""Step 3b of the pipeline: the exact attribution graph of one target logit (docs/graph.md).

With patterns, gates and norm scales frozen (engine.py), the target

    T = ⟨u, f ⊙ x_L[p*]⟩ (+ the unembedding bias's share)

is linear in every component's write w_b. u is W_U[t] − W_U[t'] with a contrast token, or
the demeaned row W_U[t] − mean_v W_U[v] without one; f is the final norm's frozen scale at
the position p* predicted from.

Nodes: each position's embedding, each head's write at each position (l, h, q), with an
o_proj-bias pseudo-head where o_proj has a bias, each MLP's write at each position (l, p),
and one bias node where the model has biases. g_b = ∂T/∂x just after b's write comes from
one backward pass through the transposed frozen maps (`gradients`); effect(b) = ⟨g_b, w_b⟩.
An edge a → b is ⟨g_b, J_b(w_a)⟩, J_b the frozen linear map by which b reads the residual:

    head (l, h, q):  J_b(x) = W_o,h Σ_k A'[h, q, k] s1[k] W_v,g(h) x[k]
                     so edge = A'[h, q, k_a] s1[k_a] ⟨M_b, w_a⟩,   M_b = W_v,gᵀ W_o,hᵀ g_b
    MLP (l, p):      J_b(x) = W_down (gs[p] ⊙ W_up x[p])
                     so edge = [k_a = p] ⟨M_b, w_a⟩,                M_b = W_upᵀ (gs[p] ⊙ W_downᵀ g_b)
    the target:      edge = [k_a = p*] ⟨u ⊙ f[p*], w_a⟩               (the direct effect)

(A' carries a post-norm's 1/rms on its query rows, gs = gate · 1/rms2 (· 1/rms_post), as in
engine.decompose_stack.) w_b = J_b(x_in) + c_b, c_b the constant part a write holds (b_v, b_o,
MLP biases), so effect(b) = Σ_a edge(a → b) + ⟨g_b, c_b⟩: the bias node's edge. And since g_b
is the direct path plus Σ_c J_cᵀ g_c over the readers c after b, effect(b) = direct(b) + Σ out-edges.
Both identities are exact; tests/test_paths.py checks them against tests/naive.py.

Patterns are frozen, so edges follow the value path only: a head that feeds another head's
queries or keys gets no edge (the same blind spot as circuit-tracer's graphs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .engine import Captured, inv_rms, norm_scale
from .weights import LayerWeights, Unembed

# Node kinds, in the order a node's write enters the residual within one layer.
EMBED, HEAD, MLP, BIAS, LOGIT = 0, 1, 2, 3, 4
KIND_NAMES = ("embedding", "head", "mlp", "bias", "logit")

NODE_THRESHOLD = 0.8    # keep nodes, largest |effect| first, up to this share of Σ|effect|
EDGE_THRESHOLD = 0.98   # then edges among them, largest |weight| first, up to this share


# ----------------------------------------------------------------------------- the target


@dataclass
class Target:
    """What the graph explains: T = ⟨u, f ⊙ x_L[position]⟩ + bias_term."""
    token: int
    contrast: int | None       # None: the demeaned unembedding
    position: int              # p*, in 0 .. P-1
    u: Tensor                  # (d,)
    bias_term: float           # b_U[t] − b_U[t'] (or − mean b_U); 0 without an lm_head bias


def target_direction(unembed: Unembed, token: int, contrast: int | None, position: int) -> Target:
    W = unembed.W_U
    u = W[token] - (W[contrast] if contrast is not None else unembed.W_U_mean)
    b = 0.0
    if unembed.b_U is not None:
        b = float(unembed.b_U[token] - (unembed.b_U[contrast] if contrast is not None else unembed.b_U.mean()))
    return Target(token, contrast, position, u, b)


def real_value(logits: Tensor, target: Target) -> float:
    """T from the real forward pass's logits (P, V)."""
    row = logits[target.position].double()
    other = row[target.contrast] if target.contrast is not None else row.mean()
    return float(row[target.token] - other)


# ----------------------------------------------------------------------------- frozen maps


@dataclass
class FrozenLayer:
    """One layer's frozen scales, exactly as engine.decompose_stack applies them."""
    scale1: Tensor        # (P,)       1/rms of the attention pre-norm (ones where there is none)
    pattern: Tensor       # (H, P, P)  A' = A with the attention post-norm's 1/rms on query rows
    post1: Tensor | None  # (P,)       that 1/rms (it scales b_o too)
    gate: Tensor          # (P, d_ff)  g (· 1/rms_post of the MLP): what multiplies b_up
    gate_scale: Tensor    # (P, d_ff)  gate · 1/rms2: what multiplies W_up x
    post2: Tensor | None  # (P,)       the MLP post-norm's 1/rms (it scales b_down)


def frozen_layers(captured: Captured, layers: list[LayerWeights], dtype) -> list[FrozenLayer]:
    def f(t):
        return t.to(dtype=dtype, device=layers[0].Wv.device)

    out = []
    for l, lw in enumerate(layers):
        pre = f(captured.resid_pre[l])
        scale1 = norm_scale(pre, lw.eps1)
        scale1 = torch.ones(pre.shape[0], dtype=dtype, device=pre.device) if scale1 is None else scale1
        post1 = None if lw.eps_post1 is None else inv_rms(f(captured.attn_out[l]), lw.eps_post1)
        pattern = f(captured.patterns[l])
        if post1 is not None:
            pattern = pattern * post1[None, :, None]
        post2 = None if lw.eps_post2 is None else inv_rms(f(captured.mlp_out[l]), lw.eps_post2)
        gate = f(captured.gates[l])
        if post2 is not None:
            gate = gate * post2.unsqueeze(1)
        scale2 = norm_scale(f(captured.resid_mid[l]), lw.eps2)
        gate_scale = gate if scale2 is None else gate * scale2.unsqueeze(1)
        out.append(FrozenLayer(scale1, pattern, post1, gate, gate_scale, post2))
    return out


def _heads_view(X: Tensor, H: int) -> Tensor:
    """(P, H·hd) -> (P, H, hd)."""
    return X.view(X.shape[0], H, -1)


def read_heads(g: Tensor, lw: LayerWeights) -> Tensor:
    """W_o,hᵀ g[q] for every head: what head h's output at q is worth.   (..., P, d) -> (..., P, H, hd)"""
    G = g @ lw.Wo                                                           # (..., P, H·hd)
    return G.view(*G.shape[:-1], lw.n_heads, -1)


def heads_to_values(Gh: Tensor, pattern: Tensor, lw: LayerWeights) -> Tensor:
    """Σ_q A'[h, q, k] Gh[q, h], summed over the heads sharing a kv group.
    (..., P, H, hd) -> (..., P, d_kv)"""
    H, n_kv = lw.n_heads, lw.n_kv
    per_head = torch.einsum("hqk,...qhd->...khd", pattern, Gh)           # (..., P_k, H, hd)
    *lead, P, _, hd = per_head.shape
    return per_head.reshape(*lead, P, n_kv, H // n_kv, hd).sum(-2).reshape(*lead, P, n_kv * hd)


# ----------------------------------------------------------------------------- gradients


@dataclass
class Gradients:
    """g_b for every node, by where its write lands.   (L, P, d) and (P, d)"""
    after_attn: Tensor    # ∂T/∂(residual after layer l's attention): heads of layer l
    after_mlp: Tensor     # ∂T/∂(residual after layer l's MLP): the MLP of layer l
    embed: Tensor         # ∂T/∂(layer 0's input): the embeddings
    direct: Tensor        # (d,) u ⊙ f[p*]: the target's own read vector


def gradients(fl: list[FrozenLayer], layers: list[LayerWeights], unembed: Unembed,
              targets: list[Target], resid_final: Tensor) -> list[Gradients]:
    """One backward pass through the transposed frozen maps, last layer first, for all targets
    at once: each target's gradient is a row of the batch (K targets), so every weight matrix
    is read once per layer whatever K is. The maps are linear, so the rows never mix."""
    P, d = resid_final.shape
    L, K = len(layers), len(targets)
    if not K:
        return []
    f = unembed.w_norm * inv_rms(resid_final.to(unembed.W_U.dtype), unembed.eps).unsqueeze(1)   # (P, d)
    direct = torch.stack([t.u * f[t.position] for t in targets])          # (K, d)
    g = direct.new_zeros(K, P, d)
    for i, t in enumerate(targets):
        g[i, t.position] = direct[i]
    after_attn = g.new_empty(L, K, P, d)
    after_mlp = g.new_empty(L, K, P, d)
    for l in reversed(range(L)):
        lw, fz = layers[l], fl[l]
        after_mlp[l] = g
        g = g + ((g @ lw.Wdown) * fz.gate_scale) @ lw.Wup                     # back through the MLP
        after_attn[l] = g
        Gv = heads_to_values(read_heads(g, lw), fz.pattern, lw)             # (K, P, d_kv)
        g = g + (Gv @ lw.Wv) * fz.scale1.unsqueeze(1)                      # back through attention
    return [Gradients(after_attn[:, i], after_mlp[:, i], g[i], direct[i]) for i in range(K)]


# ----------------------------------------------------------------------------- node effects


@dataclass
class Writes:
    """Every node's write, from one pass of the frozen model itself, started at the embeddings:
    its residual is then exactly the sum of the writes before it, so the identities below hold
    to the working precision (the real residual differs by the reconstruction error)."""
    O: list[Tensor]       # L × (P, H·hd)  the heads' outputs, o_proj's input (b_v included)
    mid: list[Tensor]     # L × (P, d)     the residual after attention
    emb: Tensor           # (P, d)
    mlp: list[Tensor]     # L × (P, d)     the MLP's write


def node_writes(captured: Captured, fl: list[FrozenLayer], layers: list[LayerWeights], dtype) -> Writes:
    from .engine import head_outputs
    emb = captured.resid_pre[0].to(dtype=dtype, device=layers[0].Wv.device)
    x, O, mid, mlp = emb, [], [], []
    for lw, fz in zip(layers, fl):
        o = head_outputs(x, fz.scale1, fz.pattern, lw)                       # (P, H·hd)
        x = x + o @ lw.Wo.T                                                   # x = x + attn(ln_1(x))
        if lw.bo is not None:
            x = x + (lw.bo if fz.post1 is None else fz.post1.unsqueeze(1) * lw.bo)
        O.append(o), mid.append(x)
        mlp.append(mlp_write(x, fz, lw))
        x = x + mlp[-1]                                                       # x = x + mlp(ln_2(x))
    return Writes(O, mid, emb, mlp)


def mlp_hidden(x: Tensor, fz: FrozenLayer, lw: LayerWeights) -> Tensor:
    """gs ⊙ W_up x + gate ⊙ b_up: what W_down multiplies.   (P, d) -> (P, d_ff)"""
    h = (x @ lw.Wup.T) * fz.gate_scale
    return h if lw.bup is None else h + lw.bup * fz.gate


def mlp_write(x: Tensor, fz: FrozenLayer, lw: LayerWeights) -> Tensor:
    w = mlp_hidden(x, fz, lw) @ lw.Wdown.T
    if lw.bdown is not None:
        w = w + (lw.bdown if fz.post2 is None else fz.post2.unsqueeze(1) * lw.bdown)
    return w


@dataclass
class Effects:
    """Node effects (numpy, float64 sums of the working dtype)."""
    embed: np.ndarray      # (P,)
    heads: np.ndarray      # (L, H', P)   H' = H (+ 1: the o_proj-bias pseudo-head)
    mlp: np.ndarray        # (L, P)
    bias: float            # Σ of the bias node's out-edges, its direct share included
    head_const: np.ndarray  # (L, H', P)  the bias node's edge into each head
    mlp_const: np.ndarray   # (L, P)      ... into each MLP
    head_direct: np.ndarray  # (L, H', P)  the direct (logit-lens) part of each effect
    mlp_direct: np.ndarray   # (L, P)
    embed_direct: np.ndarray  # (P,)


def node_effects(captured: Captured, fl, layers, grads: Gradients, writes: Writes, target: Target,
                 dtype) -> Effects:
    L, P = len(layers), writes.emb.shape[0]
    H = layers[0].n_heads
    has_ob = layers[0].bo is not None
    Hx = H + int(has_ob)
    heads, head_const = np.zeros((L, Hx, P)), np.zeros((L, Hx, P))
    head_direct = np.zeros((L, Hx, P))
    mlp, mlp_const, mlp_direct = np.zeros((L, P)), np.zeros((L, P)), np.zeros((L, P))
    p_star, dvec = target.position, grads.direct
    for l, lw in enumerate(layers):
        fz = fl[l]
        Gh = read_heads(grads.after_attn[l], lw)                             # (P, H, hd)
        Oh = _heads_view(writes.O[l], H)
        heads[l, :H] = (Gh * Oh).sum(-1).T.double().cpu().numpy()
        head_direct[l, :H, p_star] = (_heads_view((dvec @ lw.Wo)[None], H)[0] * Oh[p_star]).sum(-1).double().cpu().numpy()
        if lw.bv is not None:           # b_v through the pattern: Σ_k A'[h, q, k] · W_o,h b_v,g
            hd = Oh.shape[2]
            bvh = lw.bv.view(lw.n_kv, 1, hd).expand(lw.n_kv, H // lw.n_kv, hd).reshape(H, hd)
            head_const[l, :H] = ((Gh * bvh).sum(-1).T * fz.pattern.sum(-1)).double().cpu().numpy()
        if has_ob:
            ob = lw.bo if fz.post1 is None else fz.post1.unsqueeze(1) * lw.bo   # (P, d) or (d,)
            e = (grads.after_attn[l] * ob).sum(-1)
            heads[l, H] = head_const[l, H] = e.double().cpu().numpy()
            head_direct[l, H, p_star] = float((dvec * (ob if ob.dim() == 1 else ob[p_star])).sum())
        back = grads.after_mlp[l] @ lw.Wdown                                 # (P, d_ff)
        const = (back * (lw.bup * fz.gate)).sum(-1) if lw.bup is not None else back.new_zeros(P)
        if lw.bdown is not None:
            bd = grads.after_mlp[l] @ lw.bdown                               # (P,)
            const = const + (bd if fz.post2 is None else bd * fz.post2)
        mlp[l] = (grads.after_mlp[l] * writes.mlp[l]).sum(-1).double().cpu().numpy()
        mlp_const[l] = const.double().cpu().numpy()
        mlp_direct[l, p_star] = float((dvec * writes.mlp[l][p_star]).sum())
    embed = (grads.embed * writes.emb).sum(-1).double().cpu().numpy()
    embed_direct = np.zeros(P)
    embed_direct[p_star] = float((dvec * writes.emb[p_star]).sum())
    bias = float(head_const.sum() + mlp_const.sum()) + target.bias_term
    return Effects(embed, heads, mlp, bias, head_const, mlp_const, head_direct, mlp_direct, embed_direct)


# ----------------------------------------------------------------------------- the graph


@dataclass
class Graph:
    """One target's attribution graph. Node effects cover every node; `nodes`/`edges` the
    pruned graph (node_threshold, edge_threshold). See docs/graph.md."""
    value: float                    # T from the real forward pass
    frozen_value: float             # Σ_p embed + bias: T in the frozen model (= value, to float error)
    target: int
    contrast: int | None
    position: int
    target_text: str
    contrast_text: str | None
    tokens: list[str]
    embed: np.ndarray               # (P,)
    heads: np.ndarray               # (L, H', P)
    mlp: np.ndarray                 # (L, P)
    bias: float
    head_labels: list[str]
    nodes: dict                     # kept nodes: kind, layer, head, position, effect (arrays)
    edges: dict                     # src, dst (indices into nodes), weight
    completeness: float
    node_threshold: float
    edge_threshold: float
    heads_by_source: np.ndarray | None = None   # (L, H', P, G)
    mlp_by_source: np.ndarray | None = None     # (L, P, G)
    sources: list[str] = field(default_factory=list)
    token_ids: np.ndarray | None = None         # (P,)
    groups: np.ndarray | None = None            # (P,) each token's source group
    direct: dict = field(default_factory=dict)  # the direct (logit-lens) parts: embed, heads, mlp
    model: dict = field(default_factory=dict)
    paths: list = field(default_factory=list)   # [(value, [node index, ..., target])], strongest first
    check: object = None                        # ablate.Check, when run
    has_bias: bool = False
    decomposition: object = field(default=None, repr=False)   # infoflow.graph(): the run it came from

    def node_label(self, i: int) -> str:
        n = self.nodes
        kind, l, h, p = int(n["kind"][i]), int(n["layer"][i]), int(n["head"][i]), int(n["position"][i])
        tok = self.tokens[p] if 0 <= p < len(self.tokens) else ""
        if kind == EMBED:
            return f"emb {tok!r}@{p}"
        if kind == HEAD:
            return f"head {l}.{self.head_labels[h]} {tok!r}@{p}"
        if kind == MLP:
            return f"MLP {l} {tok!r}@{p}"
        if kind == BIAS:
            return "bias"
        return f"logit {self.target_text!r}" + (f" − {self.contrast_text!r}" if self.contrast is not None else "")

    def _repr_html_(self):      # a notebook shows the paths as text until the graph view embeds
        import html
        return "<pre>" + html.escape(format_paths(self)) + "</pre>"


def all_nodes(effects: Effects, has_bias: bool) -> dict:
    """Every node but the target, as parallel arrays (the order: embeddings, then per layer its
    heads then its MLP, then the bias node)."""
    L, Hx, P = effects.heads.shape
    kind, layer, head, pos, eff = [], [], [], [], []

    def add(k, l, h, p, e):
        kind.append(k), layer.append(l), head.append(h), pos.append(p), eff.append(e)

    for p in range(P):
        add(EMBED, -1, -1, p, effects.embed[p])
    for l in range(L):
        for h in range(Hx):
            for p in range(P):
                add(HEAD, l, h, p, effects.heads[l, h, p])
        for p in range(P):
            add(MLP, l, -1, p, effects.mlp[l, p])
    if has_bias:
        add(BIAS, -1, -1, -1, effects.bias)
    return {"kind": np.array(kind, np.int8), "layer": np.array(layer, np.int16),
            "head": np.array(head, np.int16), "position": np.array(pos, np.int32),
            "effect": np.array(eff, np.float64)}


def cumulative_keep(values: np.ndarray, share: float) -> np.ndarray:
    """Indices of the largest |values|, in descending order, up to `share` of Σ|values|
    (at least one; share ≥ 1 keeps everything, zeros included)."""
    a = np.abs(values)
    order = np.argsort(-a, kind="stable")
    if share >= 1:
        return order
    total = a.sum()
    if total == 0:
        return order[:1]
    cum = np.cumsum(a[order]) / total
    n = int(np.searchsorted(cum, share - 1e-12) + 1)
    return order[:min(n, len(order))]


def select(nodes: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in nodes.items()}


def with_logit(nodes: dict, target: Target, value: float) -> dict:
    """Append the target (logit) node at the end."""
    out = {k: np.concatenate([v, np.zeros(1, v.dtype)]) for k, v in nodes.items()}
    out["kind"][-1], out["layer"][-1], out["head"][-1] = LOGIT, 10 ** 4, -1
    out["position"][-1], out["effect"][-1] = target.position, value
    return out


def _order(nodes: dict) -> np.ndarray:
    """A node's place in the forward pass: embeddings, then per layer heads then MLP, then the
    target. A reads b's write only if order(a) > order(b)... except heads of one layer, which
    read the layer's input: equal order among them means no edge."""
    k, l = nodes["kind"].astype(np.int64), nodes["layer"].astype(np.int64)
    return np.where(k == EMBED, -1, np.where(k == HEAD, 2 * l, np.where(k == MLP, 2 * l + 1,
                                                                         np.where(k == BIAS, -2, 10 ** 6))))


class Reader:
    """Node writes and read vectors, from the frozen model, for any set of nodes."""

    def __init__(self, captured, fl, layers, grads: Gradients, writes: Writes, target: Target, dtype):
        self.captured, self.fl, self.layers, self.grads = captured, fl, layers, grads
        self.writes, self.target, self.dtype = writes, target, dtype
        self.H = layers[0].n_heads

    def write(self, kind, l, h, p) -> Tensor:
        """w_b (d,): the node's whole write at its position (constant parts included)."""
        lw, H = self.layers[l] if l >= 0 else None, self.H
        if kind == EMBED:
            return self.writes.emb[p]
        if kind == HEAD:
            fz = self.fl[l]
            if h == H:
                return lw.bo if fz.post1 is None else lw.bo * fz.post1[p]
            hd = self.writes.O[l].shape[1] // H
            return lw.Wo[:, h * hd:(h + 1) * hd] @ self.writes.O[l][p, h * hd:(h + 1) * hd]
        if kind == MLP:
            fz = self.fl[l]
            return self.writes.mlp[l][p]
        raise ValueError(kind)


def edge_matrix(reader: Reader, dst: dict, src: dict, const: Effects) -> np.ndarray:
    """Edges src → dst, (n_dst, n_src); zero where src does not come before dst. A bias node
    among the sources gets ⟨g_b, c_b⟩: the constant part of b's write.

    Each dst node's read vector M_b is its own gradient pulled back through its frozen map,
    so the reads come from _pull_back_all in one batch per (kind, layer), with their
    coefficients at every source's position."""
    S = len(src["kind"])
    writes = torch.stack([reader.write(*_key(src, i)) if src["kind"][i] not in (BIAS, LOGIT)
                          else torch.zeros_like(reader.grads.direct) for i in range(S)])   # (S, d)
    reads, coef = _pull_back_all(reader, dst, list(range(len(dst["kind"]))), _own_gradients(reader, dst),
                                 positions=src["position"])                          # (D, d), (D, S)
    out = (reads @ writes.T).double().cpu().numpy() * coef                            # (D, S)
    out *= _order(src)[None, :] < _order(dst)[:, None]
    is_bias = src["kind"] == BIAS
    if is_bias.any():
        col = int(np.flatnonzero(is_bias)[0])
        out[:, col] = [_const_edge(const, reader.target, dst, j) for j in range(len(dst["kind"]))]
    return out


def _own_gradients(reader: Reader, nodes: dict) -> Tensor:
    """g_b for every node: where its write lands (the target: its read vector; an embedding or
    the bias node reads nothing: zeros).   (n, d)"""
    g = reader.grads
    out = g.direct.new_zeros(len(nodes["kind"]), g.direct.shape[0])
    kinds, layer = nodes["kind"], nodes["layer"].astype(np.int64)
    pos = torch.as_tensor(nodes["position"].astype(np.int64), device=out.device)
    for kind, l in sorted(set(zip(kinds.tolist(), layer.tolist()))):
        rows = torch.as_tensor(np.flatnonzero((kinds == kind) & (layer == l)), device=out.device)
        if kind == HEAD:
            out[rows] = g.after_attn[l][pos[rows]]
        elif kind == MLP:
            out[rows] = g.after_mlp[l][pos[rows]]
        elif kind == LOGIT:
            out[rows] = g.direct
    return out


def _key(nodes, i):
    return int(nodes["kind"][i]), int(nodes["layer"][i]), int(nodes["head"][i]), int(nodes["position"][i])


def _const_edge(const: Effects, target: Target, dst: dict, j: int) -> float:
    kind, l, h, p = _key(dst, j)
    if kind == HEAD:
        return float(const.head_const[l, h, p])
    if kind == MLP:
        return float(const.mlp_const[l, p])
    if kind == LOGIT:
        return target.bias_term
    return 0.0


def prune(effects: Effects, reader: Reader, target: Target, value: float, has_bias: bool,
          node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD):
    """(kept nodes + the target last, edges (src, dst, weight), completeness)."""
    every = all_nodes(effects, has_bias)
    kept = np.sort(cumulative_keep(every["effect"], node_threshold))
    nodes = with_logit(select(every, kept), target, value)
    E = edge_matrix(reader, nodes, nodes, effects)                       # (n, n) dst × src
    dst, src = np.nonzero(E)
    keep = cumulative_keep(E[dst, src], edge_threshold)
    keep = keep[np.lexsort((src[keep], dst[keep]))]
    edges = {"src": src[keep].astype(np.int32), "dst": dst[keep].astype(np.int32),
             "weight": E[dst[keep], src[keep]]}
    frozen = float(effects.embed.sum() + effects.bias)      # T in the frozen model itself
    return nodes, edges, completeness(reader, nodes, edges, target) / frozen if frozen else float("nan")


def completeness(reader: Reader, nodes: dict, edges: dict, target: Target) -> float:
    """T recomputed through the kept nodes and edges alone.

    Each kept node's write is rebuilt from its kept in-edges only, in forward order: a head
    or MLP applies its frozen map J_b to the rebuilt writes of its kept sources (and adds its
    constant part when the bias node's edge into it is kept); an embedding keeps its write.
    The target reads its kept sources' rebuilt writes (and the unembedding bias's share).
    Unpruned, every write comes back exactly and this is T.

    The nodes of one (kind, layer) read only nodes before them (a layer's heads read its input,
    its MLPs its heads and what came before), so each such group is rebuilt in one batch: its
    reads as rows of C @ R, C the kept edges' coefficients and R the writes rebuilt so far."""
    kinds, n = nodes["kind"], len(nodes["kind"])
    dev, dt = reader.grads.direct.device, reader.grads.direct.dtype
    pos = nodes["position"].astype(np.int64)
    R = reader.grads.direct.new_zeros(n, reader.grads.direct.shape[0])       # (n, d) rebuilt writes
    emb = np.flatnonzero(kinds == EMBED)
    R[torch.as_tensor(emb, device=dev)] = reader.writes.emb[torch.as_tensor(pos[emb], device=dev)]
    src, dst = edges["src"].astype(np.int64), edges["dst"].astype(np.int64)
    from_bias = kinds[src] == BIAS
    has_const = np.zeros(n, bool)
    has_const[dst[from_bias]] = True
    s, t = src[~from_bias], dst[~from_bias]
    C = torch.zeros(n, n, dtype=dt, device=dev)                              # (n, n) dst × src
    C[torch.as_tensor(t, device=dev), torch.as_tensor(s, device=dev)] = torch.as_tensor(
        _edge_coefs(reader, nodes, s, t), dtype=dt, device=dev)
    order = _order(nodes)
    total = 0.0
    for o in sorted(set(order[(kinds == HEAD) | (kinds == MLP) | (kinds == LOGIT)].tolist())):
        rows = np.flatnonzero((order == o) & (kinds != EMBED) & (kinds != BIAS))
        r = torch.as_tensor(rows, device=dev)
        X = C[r] @ R                                                          # (b, d) their reads
        kind = int(kinds[rows[0]])
        if kind == LOGIT:
            total = float((reader.grads.direct * X[0]).sum()) + (target.bias_term if has_const[rows[0]] else 0.0)
            continue
        l = int(nodes["layer"][rows[0]])
        R[r] = _apply_all(kind, reader, l, nodes["head"][rows].astype(np.int64), pos[rows], X, has_const[rows])
    return total


def _edge_coefs(reader: Reader, nodes: dict, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """coef(b, k_a) of each edge a → b: how much of a's position node b reads.   (E,)"""
    out = np.zeros(len(src))
    kinds, layer = nodes["kind"][dst], nodes["layer"][dst].astype(np.int64)
    k, q, h = nodes["position"][src].astype(np.int64), nodes["position"][dst].astype(np.int64), nodes["head"][dst].astype(np.int64)
    out[(kinds == MLP) | (kinds == LOGIT)] = (k == q)[(kinds == MLP) | (kinds == LOGIT)]
    for l in sorted(set(layer[kinds == HEAD].tolist())):
        e = np.flatnonzero((kinds == HEAD) & (layer == l) & (h < reader.H))   # the pseudo-head reads nothing
        fz = reader.fl[l]
        ht, qt, kt = (torch.as_tensor(a[e], device=fz.pattern.device) for a in (h, q, k))
        out[e] = (fz.pattern[ht, qt, kt] * fz.scale1[kt]).double().cpu().numpy()
    return out


def _apply_all(kind, reader: Reader, l: int, h: np.ndarray, p: np.ndarray, X: Tensor,
               const: np.ndarray) -> Tensor:
    """J_b(x) (+ c_b where `const`) for nodes of one kind in layer l: the frozen map on reads
    already weighted by their pattern rows.
    (b, d) reads -> (b, d) writes"""
    lw, fz, H = reader.layers[l], reader.fl[l], reader.H
    dev = X.device
    pt, ct = torch.as_tensor(p, device=dev), torch.as_tensor(const, device=dev)
    if kind == MLP:
        u = (X @ lw.Wup.T) * fz.gate_scale[pt]                                # (b, d_ff)
        if lw.bup is not None:
            u = u + (lw.bup * fz.gate[pt]) * ct[:, None]
        w = u @ lw.Wdown.T                                                    # (b, d)
        if lw.bdown is not None:
            bd = lw.bdown if fz.post2 is None else lw.bdown * fz.post2[pt][:, None]
            w = w + bd * ct[:, None]
        return w
    out = torch.zeros_like(X)
    pseudo = np.flatnonzero(h == H)
    if len(pseudo):                                                            # the o_proj bias: a constant
        ps = torch.as_tensor(pseudo, device=dev)
        bo = lw.bo if fz.post1 is None else lw.bo * fz.post1[pt[ps]][:, None]
        out[ps] = bo * ct[ps][:, None]
    real = np.flatnonzero(h < H)
    if len(real):
        rt = torch.as_tensor(real, device=dev)
        hd = lw.Wo.shape[1] // H
        hh = torch.as_tensor(h[real], device=dev)
        g = hh // (H // lw.n_kv)
        v = torch.einsum("bd,bjd->bj", X[rt], lw.Wv.view(lw.n_kv, hd, -1)[g])  # (b, hd)
        if lw.bv is not None:                                                  # b_v through the pattern row
            v = v + lw.bv.view(lw.n_kv, hd)[g] * (fz.pattern[hh, pt[rt]].sum(-1) * ct[rt])[:, None]
        Wo = lw.Wo.view(lw.Wo.shape[0], H, hd).permute(1, 0, 2)[hh]           # (b, d, hd)
        out[rt] = torch.einsum("bj,bdj->bd", v, Wo)
    return out


# ----------------------------------------------------------------------------- per-source splits


class SourceSplit:
    """effect(b) split by source, from the engine's packed parts (an observer of
    engine.decompose_stack): ⟨g_b, part_b,s⟩ summed within groups."""

    def __init__(self, grads: list[Gradients], layers, tri, grouping: Tensor | None, G: int):
        L, P = len(layers), tri.P
        H = layers[0].n_heads
        Hx = H + int(layers[0].bo is not None)
        self.grads, self.layers, self.tri, self.H = grads, layers, tri, H
        self.group = tri.src if grouping is None else grouping[tri.src]        # (T,)
        self.G = G
        self.heads = [np.zeros((L, Hx, P, G)) for _ in grads]
        self.mlp = [np.zeros((L, P, G)) for _ in grads]

    def attention(self, l: int, O: Tensor, lw: LayerWeights, post1: Tensor | None) -> None:
        tri, H, G, P = self.tri, self.H, self.G, self.tri.P
        for i, g in enumerate(self.grads):
            R = g.after_attn[l].to(O.dtype) @ lw.Wo                             # (P, H·hd)
            per = (R[tri.pos] * O).view(O.shape[0], H, -1).sum(-1)             # (T, H)
            idx = tri.pos * G + self.group
            acc = per.new_zeros(P * G, H).index_add_(0, idx, per)
            self.heads[i][l, :H] = acc.view(P, G, H).permute(2, 0, 1).double().cpu().numpy()
            if lw.bo is not None:
                ob = lw.bo if post1 is None else post1.unsqueeze(1) * lw.bo
                self.heads[i][l, H, :, G - 1] = (g.after_attn[l].to(O.dtype) * ob).sum(-1).double().cpu().numpy()

    def mlp_rows(self, l: int, rows, delta: Tensor) -> None:
        """rows: a slice or an index tensor of packed rows; delta (n, d) their MLP writes."""
        tri, G, P = self.tri, self.G, self.tri.P
        pos = tri.pos[rows]
        idx = pos * G + self.group[rows]
        for i, g in enumerate(self.grads):
            dots = (g.after_mlp[l].to(delta.dtype)[pos] * delta).sum(-1)
            acc = dots.new_zeros(P * G).index_add_(0, idx, dots)
            self.mlp[i][l] += acc.view(P, G).double().cpu().numpy()


# ----------------------------------------------------------------------------- text


def strongest_paths(reader: "Reader", nodes: dict, edges: dict, k: int = 5, beam: int = 48,
                    max_len: int = 12) -> list[tuple[float, list[int]]]:
    """The k complete paths (an embedding or the bias node → ... → the target) through the
    kept graph with the largest |value|, exactly.

    A path's value is its term in the expansion of T into paths: the target's read vector
    pulled back through each node's frozen map in turn (φ_a = coef(c, k_a)·J_cᵀ φ_c), read
    against the path's first write. Over all paths of the unpruned graph these sum to T.
    Beam search keeps the `beam` partial paths with the largest |⟨φ, w⟩| at each depth."""
    n = len(nodes["kind"])
    kinds = nodes["kind"]
    adj = np.zeros((n, n), bool)                                          # dst × src, kept edges
    adj[edges["dst"], edges["src"]] = True
    zero = torch.zeros_like(reader.grads.direct)
    W = torch.stack([reader.write(*_key(nodes, i)) if kinds[i] not in (BIAS, LOGIT) else zero
                     for i in range(n)])                                  # (n, d)
    pos = nodes["position"].astype(np.int64)
    terminal = (kinds == EMBED) | (kinds == BIAS)
    bias_col = np.flatnonzero(kinds == BIAS)
    done: list[tuple[float, list[int]]] = []
    states = [(reader.grads.direct, [n - 1])]            # (φ that reads what feeds path[0], path)
    for _ in range(max_len):
        if not states:
            break
        Pb, coef = _pull_back_all(reader, nodes, [path[0] for _, path in states],
                                  torch.stack([phi for phi, _ in states]))      # (B, d), (B, n)
        C = coef * adj[[path[0] for _, path in states]]                   # (B, n)
        vals = (Pb @ W.T).double().cpu().numpy() * C                      # (B, n)
        for b, (phi, path) in enumerate(states):                          # the bias node's term
            if len(bias_col) and adj[path[0], bias_col[0]]:
                kind, l, h, p = _key(nodes, path[0])
                vals[b, bias_col[0]] = (reader.target.bias_term if kind == LOGIT
                                        else _const_value(reader, kind, l, h, p, phi))
        for b, a in zip(*np.nonzero(vals[:, terminal])):
            a = int(np.flatnonzero(terminal)[a])
            done.append((float(vals[b, a]), [a] + states[b][1]))
        inner = np.abs(np.where(terminal[None, :] | (C == 0), 0.0, vals))
        flat = np.argsort(-inner, axis=None, kind="stable")[:beam]
        flat = flat[inner.ravel()[flat] > 0]
        states = [(float(C[b, a]) * Pb[b], [int(a)] + states[b][1])
                  for b, a in zip(*np.unravel_index(flat, inner.shape))]
    done.sort(key=lambda t: -abs(t[0]))
    return done[:k]


def _pull_back_all(reader: "Reader", nodes: dict, heads: list[int], phis: Tensor,
                   positions: np.ndarray | None = None) -> tuple[Tensor, np.ndarray]:
    """Each φ pulled back through its node (a beam state's first node, or a node's own gradient
    for its read vector): J_bᵀ φ, before the node's per-position coefficient, and that
    coefficient at each of `positions` (default: every node's position).
    (B,) node indices, (B, d) -> (B, d), (B, n). One batch per (kind, layer): the nodes of a
    layer share its weight matrices, and differ only in their gate row or head slice."""
    pos = (nodes["position"] if positions is None else positions).astype(np.int64)
    B, n = len(heads), len(pos)
    heads = np.asarray(heads, np.int64)
    kinds, layer = nodes["kind"][heads], nodes["layer"][heads].astype(np.int64)
    hh, pp = nodes["head"][heads].astype(np.int64), nodes["position"].astype(np.int64)[heads]   # the node's own
    out, coef = torch.zeros_like(phis), np.zeros((B, n))
    for kind, l in sorted(set(zip(kinds.tolist(), layer.tolist()))):
        rows = np.flatnonzero((kinds == kind) & (layer == l))
        r = torch.as_tensor(rows, device=phis.device)
        if kind == LOGIT:
            out[r] = phis[r]
            coef[rows] = pos[None, :] == pp[rows, None]
        elif kind == MLP:
            lw, fz = reader.layers[l], reader.fl[l]
            gs = fz.gate_scale[torch.as_tensor(pp[rows], device=phis.device)]     # (b, d_ff)
            out[r] = ((phis[r] @ lw.Wdown) * gs) @ lw.Wup
            coef[rows] = pos[None, :] == pp[rows, None]
        elif kind == HEAD:
            real = rows[hh[rows] < reader.H]                   # the o_proj-bias pseudo-head reads nothing
            if len(real):
                out[torch.as_tensor(real, device=phis.device)], coef[real] = _pull_back_heads(
                    reader, l, hh[real], pp[real], phis[torch.as_tensor(real, device=phis.device)], pos)
    return out, coef


def _pull_back_heads(reader: "Reader", l: int, h: np.ndarray, p: np.ndarray, phis: Tensor,
                     pos: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """W_v,gᵀ W_o,hᵀ φ for heads h (b,) of layer l, and their pattern rows at positions p,
    read at every node's position.   (b, d) -> (b, d), (b, n)"""
    lw, fz, H = reader.layers[l], reader.fl[l], reader.H
    hd = lw.Wo.shape[1] // H
    dev = phis.device
    ht, pt = torch.as_tensor(h, device=dev), torch.as_tensor(p, device=dev)
    R = (phis @ lw.Wo).view(len(h), H, hd)[torch.arange(len(h), device=dev), ht]     # (b, hd)
    Wv = lw.Wv.view(lw.n_kv, hd, -1)[ht // (H // lw.n_kv)]                          # (b, hd, d)
    out = torch.einsum("bj,bjd->bd", R, Wv)
    rows = (fz.pattern[ht, pt] * fz.scale1).double().cpu().numpy()                   # (b, P)
    return out, rows[:, pos]


def _const_value(reader: "Reader", kind, l, h, p, phi: Tensor) -> float:
    """⟨φ, c_b⟩: the constant part of node b's write, read by φ."""
    c = _apply_all(kind, reader, l, np.array([h]), np.array([p]), torch.zeros_like(phi)[None], np.array([True]))[0]
    return float((phi * c).sum())


def format_paths(g: Graph, k: int = 5) -> str:
    tgt = repr(g.target_text) + (f" − {g.contrast_text!r}" if g.contrast is not None else " (demeaned)")
    lines = [f"T = {g.value:+.4f}  logit {tgt} at position {g.position} ({g.tokens[g.position]!r}); "
             f"frozen model {g.frozen_value:+.4f}",
             f"pruned graph: {len(g.nodes['kind']) - 1} nodes, {len(g.edges['src'])} edges, "
             f"completeness {g.completeness:.3f}"]
    top = sorted(range(len(g.embed)), key=lambda p: -abs(g.embed[p]))[:5]
    lines.append("by source token: " + ", ".join(f"{g.tokens[p]!r}@{p} {g.embed[p]:+.3f}" for p in top)
                 + (f", bias {g.bias:+.3f}" if g.bias else ""))
    lines.append("strongest paths (each path's exact term of T, through the pruned graph):")
    for val, path in g.paths[:k]:
        lines.append(f"  {val:+.4f}  " + " → ".join(g.node_label(i) for i in path))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one graph


@dataclass
class TargetSpec:
    """A target as asked for: token strings or ids (None: the prediction of rank `rank` at
    `position`, 0 the top one; no contrast: demeaned)."""
    target: str | int | None = None
    contrast: str | int | None = None
    position: int = -1
    rank: int = 0


def one_token(tokenizer, text, what: str) -> int:
    """The single token id of `text`, or an InputError naming the tokens it would make."""
    from .decompose import InputError
    if isinstance(text, (int, np.integer)):
        return int(text)
    if not isinstance(text, str) or text == "":
        raise InputError(f"The {what} must be a non-empty string (one token), not {text!r}.")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"The {what} {text!r} is {len(ids)} tokens on this model, {pieces!r}; "
                         "give a single token (try it with or without a leading space).")
    return int(ids[0])


def resolve_target(spec: TargetSpec, tokenizer, logits: Tensor, unembed: Unembed) -> Target:
    from .decompose import InputError
    P = logits.shape[0]
    pos = spec.position
    if not isinstance(pos, (int, np.integer)) or not -P <= pos < P:
        raise InputError(f"position {pos!r} is out of range: the prompt has {P} tokens "
                         f"(use 0 .. {P - 1}, or -1 for the last).")
    pos = int(pos) % P
    if spec.target is None:
        V = logits.shape[1]
        if not isinstance(spec.rank, (int, np.integer)) or not 0 <= spec.rank < V:
            raise InputError(f"rank {spec.rank!r} is out of range: use 0 .. {V - 1} (0: the top prediction).")
        token = int(logits[pos].topk(int(spec.rank) + 1).indices[-1])
    else:
        token = one_token(tokenizer, spec.target, "target")
    contrast = None if spec.contrast is None else one_token(tokenizer, spec.contrast, "contrast")
    if contrast is not None and contrast == token:
        raise InputError("The target and the contrast are the same token; pick another contrast.")
    return target_direction(unembed, token, contrast, pos)


@dataclass
class Prepared:
    """What every target's graph shares: the frozen maps and the real writes."""
    fl: list[FrozenLayer]
    writes: Writes


def prepare(captured: Captured, layers, dtype) -> Prepared:
    fl = frozen_layers(captured, layers, dtype)
    return Prepared(fl, node_writes(captured, fl, layers, dtype))


def build_graph(captured: Captured, layers, unembed: Unembed, prep: Prepared, target: Target,
                grads: Gradients, *, tokens: list[str], token_ids, groups, token_text, has_bias: bool, dtype,
                node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD,
                split: SourceSplit | None = None, split_index: int = 0, sources=(), model=None) -> Graph:
    eff = node_effects(captured, prep.fl, layers, grads, prep.writes, target, dtype)
    value = real_value(captured.logits, target)
    reader = Reader(captured, prep.fl, layers, grads, prep.writes, target, dtype)
    nodes, edges, compl = prune(eff, reader, target, value, has_bias, node_threshold, edge_threshold)
    H = layers[0].n_heads
    labels = [str(h) for h in range(H)] + (["o_proj bias"] if layers[0].bo is not None else [])
    g = Graph(value=value, frozen_value=float(eff.embed.sum() + eff.bias), target=target.token,
              contrast=target.contrast, position=target.position,
              target_text=token_text(target.token),
              contrast_text=None if target.contrast is None else token_text(target.contrast),
              tokens=list(tokens), token_ids=np.asarray(token_ids), groups=np.asarray(groups), embed=eff.embed, heads=eff.heads, mlp=eff.mlp,
              bias=eff.bias if has_bias else 0.0, head_labels=labels, nodes=nodes, edges=edges,
              completeness=compl, node_threshold=node_threshold, edge_threshold=edge_threshold,
              sources=list(sources), model=dict(model or {}),
              direct={"embed": eff.embed_direct, "heads": eff.head_direct, "mlp": eff.mlp_direct},
              has_bias=has_bias)
    if split is not None:
        g.heads_by_source, g.mlp_by_source = split.heads[split_index], split.mlp[split_index]
    g.paths = strongest_paths(reader, nodes, edges)
    g._reader = reader                    # for full_edges (tests) while the graph is in memory
    return g


def full_edges(g: Graph) -> tuple[dict, np.ndarray]:
    """Every node (the target last) and the dense edge matrix (dst × src) of the unpruned graph.
    Small models only (tests): n² entries."""
    r = g._reader
    eff = node_effects(r.captured, r.fl, r.layers, r.grads, r.writes, r.target, r.dtype)
    nodes = with_logit(all_nodes(eff, g.has_bias), r.target, g.value)
    return nodes, edge_matrix(r, nodes, nodes, eff)

"""Step 2 of the pipeline: the exact per-source decomposition of the residual stream.

With the attention patterns A, the SwiGLU gates g and each RMSNorm's per-position scale
frozen at their values from one real forward pass, a Llama layer is linear in its input:

    x_mid = x + W_o · (A ⊗ W_v · (w1 ⊙ x / rms1))         attention (values only)
    x_out = x_mid + W_down · (g ⊙ W_up · (w2 ⊙ x_mid / rms2))  MLP, gate frozen

Other families (arch.py) differ only in where the frozen norms sit. A post-norm on a
block's output, n ⊙ y[p] / rms(y)[p], is a frozen scalar per *query* position times a fixed
vector: n is folded into W_o (W_down), and 1/rms_post[p] into the pattern's row p (the
MLP's gate row p). A missing pre-norm (OLMo-2) is a scale of one.

so the residual splits into one vector per source token, c[p, s], with Σ_s c[p, s] = x[p].
At layer 0, c[p, s] = δ(p, s) · embedding[p].

Only the causal triangle s ≤ p exists. It is stored packed, *source-major*: source s owns
the rows for positions start[s] .. P-1, contiguous, so that attention mixing for one
source is one dense matmul over the square block A[p0:, p0:]. Biases come from no
token; they go to an extra "bias" source (start 0) that exists only for models with
biases on the value path (v_proj, o_proj, up_proj, down_proj, lm_head).

Everything here is plain torch on tensors, no hooks, so the same functions can later run
inside an nnsight trace. Memory: one layer's packed tensor C (T·d, T = P(P+1)/2) and one
scratch arena reused by every layer: the values V (T·d_kv), the mixed heads O (T·d) and a
delta chunk during attention, then the MLP row chunk (u and its delta) in the same memory;
never L·T·d. Speed (docs/performance.md): the work is a handful of large matmuls per layer;
what is not a matmul avoids (T, d_ff) gathers and fresh large allocations.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .weights import LayerWeights


# ----------------------------------------------------------------------------- inputs


@dataclass
class Captured:
    """What one forward pass froze. Every tensor is for a single sequence."""
    resid_pre: list[Tensor]    # L × (P, d)      the layer's input: the residual stream
    patterns: list[Tensor]     # L × (H, P, P)   post-softmax attention
    resid_mid: list[Tensor]    # L × (P, d)      the residual after the attention block
    gates: list[Tensor]        # L × (P, d_ff)   act_fn(gate_proj(x)), frozen
    resid_final: Tensor        # (P, d)          input of the final norm
    logits: Tensor             # (P, V)
    attn_out: list[Tensor] | None = None   # L × (P, d) input of the attention post-norm, if any
    mlp_out: list[Tensor] | None = None    # L × (P, d) input of the MLP post-norm, if any


# ----------------------------------------------------------------------------- layout


@dataclass
class Triangle:
    """Packed source-major layout of the causal triangle (plus the optional bias source)."""
    P: int
    S: int                 # sources: P tokens, + 1 when there is a bias source
    start: list[int]       # (S,)  first position of each source
    offset: list[int]      # (S+1,) row offsets
    pos: Tensor            # (T,)  position of each row
    src: Tensor            # (T,)  source of each row
    bias_rows: slice | None

    @property
    def T(self) -> int:
        return self.offset[-1]


def triangle(P: int, bias: bool, device="cpu") -> Triangle:
    start = list(range(P)) + ([0] if bias else [])
    sizes = [P - p0 for p0 in start]
    offset = [0]
    for n in sizes:
        offset.append(offset[-1] + n)
    pos = torch.cat([torch.arange(p0, P) for p0 in start]).to(device)
    src = torch.cat([torch.full((n,), s) for s, n in enumerate(sizes)]).to(device)
    bias_rows = slice(offset[P], offset[P + 1]) if bias else None
    return Triangle(P, len(start), start, offset, pos, src, bias_rows)


def _mm(a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    """a @ b, written into `out` when given. Reusing one buffer across layers matters: a
    fresh tens-of-MB tensor is fresh pages from the OS, and faulting them in costs ~20 %
    of the matmul that fills them."""
    return a @ b if out is None else torch.mm(a, b, out=out)


class _Arena:
    """One flat scratch buffer for a whole decompose_stack, carved into views.

    The attention phase uses V (T, d_kv), O (T, H·hd) and a delta chunk; the MLP phase,
    once O is spent, reuses the same memory for u (chunk, d_ff) and its delta chunk."""

    def __init__(self, like: Tensor):
        self.like, self.flat = like, like.new_empty(0)

    def reserve(self, n: int) -> None:
        """Allocate the largest size up front, so that growing never holds two buffers."""
        if self.flat.numel() < n:
            self.flat = self.like.new_empty(0)
            self.flat = self.like.new_empty(n)

    def views(self, *shapes) -> list[Tensor]:
        sizes = [math.prod(sh) for sh in shapes]
        if self.flat.numel() < sum(sizes):
            self.flat = self.like.new_empty(sum(sizes))
        out, at = [], 0
        for sh, n in zip(shapes, sizes):
            out.append(self.flat[at:at + n].view(sh))
            at += n
        return out


def inv_rms(x: Tensor, eps: float) -> Tensor:
    """1 / RMS(x) per position: the frozen scale of an RMSNorm.   (P, d) -> (P,)"""
    return torch.rsqrt(x.pow(2).mean(-1) + eps)


def norm_scale(x: Tensor | None, eps: float | None) -> Tensor | None:
    """inv_rms(x), or None where the recipe has no norm there (a scale of one)."""
    return None if eps is None else inv_rms(x, eps)


# ----------------------------------------------------------------------------- layer steps


def attention_values(C: Tensor, lw: LayerWeights, scale: Tensor | None, tri: Triangle, out: Tensor | None = None) -> Tensor:
    """V[row] = W_v · (w1 ⊙ c / rms1[pos]) for every packed row.   (T, d) -> (T, d_kv)
    scale None: no pre-norm (OLMo-2), V = W_v · c."""
    V = _mm(C, lw.Wv.T, out)
    if scale is not None:
        V.mul_(scale[tri.pos].unsqueeze(1))
    if tri.bias_rows is not None and lw.bv is not None:
        V[tri.bias_rows] += lw.bv
    return V


def mix_heads(V: Tensor, pattern: Tensor, lw: LayerWeights, tri: Triangle, O: Tensor | None = None) -> Tensor:
    """O[p, s] = Σ_t A[h, p, t] V[t, s] per head, GQA as in repeat_kv.   (T, d_kv) -> (T, H·hd)

    Sources are taken in blocks of a few (see _mix_blocks): a block's rows are scattered
    into a dense (positions ≥ its first start) × (its sources) grid, zero where s > p, and
    mixed with one batched matmul per block over A[:, p0:, p0:] (exact: rows t < start[s]
    hold nothing of source s). No loop over query positions, few and large matmuls.
    """
    H, n_kv = lw.n_heads, lw.n_kv
    rep, hd = H // n_kv, V.shape[1] // n_kv
    A = pattern.view(n_kv, rep, tri.P, tri.P)
    if O is None:
        O = V.new_empty(tri.T, H * hd)
    for a, b, p0, nb, cell in _mix_blocks(tri):
        n = tri.P - p0
        grid = V.new_zeros(n_kv, n * nb, hd)                           # (kv, n·nb, hd)
        grid.index_copy_(1, cell, V[a:b].view(b - a, n_kv, hd).transpose(0, 1))
        blk = A[:, :, p0:, p0:].reshape(n_kv, rep * n, n)             # (kv, rep·n, n)
        o = torch.bmm(blk, grid.view(n_kv, n, nb * hd))               # (kv, rep·n, nb·hd)
        o = o.view(H, n * nb, hd).transpose(0, 1)                     # (n·nb, H, hd), a view
        torch.index_select(o, 0, cell, out=O[a:b].view(b - a, H, hd))
    return O


_MIX_BLOCK = 16     # sources per head-mixing block: few matmuls, little zero padding


def _mix_blocks(tri: Triangle) -> list:
    """Blocks of consecutive sources for mix_heads, cached on the triangle.

    Each is (first row, end row, p0 = first position, sources in block, cell (rows,)):
    packed row a + r sits in the block's dense (P - p0) × nb grid at flat index cell[r].
    """
    blocks = getattr(tri, "_mix_cache", None)
    if blocks is not None:
        return blocks
    groups, run = [], []
    for s in range(tri.S):
        if tri.bias_rows is not None and s == tri.S - 1:
            groups.append([s])                      # the bias source (start 0) on its own
            continue
        run.append(s)
        if len(run) == _MIX_BLOCK:
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    blocks = []
    for g in groups:
        p0 = min(tri.start[s] for s in g)
        nb = len(g)
        cell = torch.cat([torch.arange(tri.start[s] - p0, tri.P - p0) * nb + j
                          for j, s in enumerate(g)]).to(tri.pos.device)
        blocks.append((tri.offset[g[0]], tri.offset[g[-1] + 1], p0, nb, cell))
    tri._mix_cache = blocks
    return blocks


def attention_out(O: Tensor, lw: LayerWeights, tri: Triangle, rows: slice, out: Tensor | None = None,
                  post_scale: Tensor | None = None) -> Tensor:
    """The attention block's write for a chunk of rows.   (c, H·hd) -> (c, d)

    With a post-norm, O already carries 1/rms_post[p] (through the pattern's rows) and W_o
    its weight; post_scale (P,) applies the same scale to the o_proj bias."""
    delta = _mm(O[rows], lw.Wo.T, out)
    _add_bias_rows(delta, lw.bo, tri, rows, post_scale)
    return delta


def mlp_out(C: Tensor, gate_scale: Tensor, lw: LayerWeights, gate: Tensor, tri: Triangle, rows: slice,
            u_out: Tensor | None = None, delta_out: Tensor | None = None,
            post_scale: Tensor | None = None) -> Tensor:
    """The MLP's write for a chunk of rows, gate frozen.   (c, d) -> (c, d)

    gate_scale = g / rms2 per position (P, d_ff): the frozen gate and norm scale in one
    (times 1/rms_post with a post-norm). `gate` multiplies b_up (bias source), so it carries
    1/rms_post too; post_scale (P,) scales b_down.
    """
    u = _mm(C[rows], lw.Wup.T, u_out)                                  # (c, d_ff)
    for lo, hi, p in _segments(tri, rows):       # rows of one source: consecutive positions
        u[lo - rows.start:hi - rows.start].mul_(gate_scale[p:p + hi - lo])
    if lw.bup is not None and tri.bias_rows is not None:
        lo, hi = _overlap(rows, tri.bias_rows)
        if lo < hi:
            u[lo - rows.start:hi - rows.start] += lw.bup * gate[tri.pos[lo:hi]]
    delta = _mm(u, lw.Wdown.T, delta_out)
    _add_bias_rows(delta, lw.bdown, tri, rows, post_scale)
    return delta


def _segments(tri: Triangle, rows: slice):
    """(lo, hi, p): rows lo..hi-1 of `rows` belong to one source and hold positions p, p+1, ..."""
    s = bisect.bisect_right(tri.offset, rows.start) - 1
    while s < tri.S and tri.offset[s] < rows.stop:
        lo, hi = max(rows.start, tri.offset[s]), min(rows.stop, tri.offset[s + 1])
        if lo < hi:
            yield lo, hi, tri.start[s] + lo - tri.offset[s]
        s += 1


def _rowwise_dot(X: Tensor, table: Tensor, tri: Triangle, rows: slice, scratch: Tensor) -> Tensor:
    """⟨X[i], table[pos[rows.start + i]]⟩ per row, gathering into `scratch` (X's shape),
    which it overwrites: index_select is ~4× faster than advanced indexing here, and a
    reused buffer costs no page faults."""
    return torch.index_select(table, 0, tri.pos[rows], out=scratch).mul_(X).sum(1)


def _overlap(a: slice, b: slice) -> tuple[int, int]:
    return max(a.start, b.start), min(a.stop, b.stop)


def _add_bias_rows(delta: Tensor, bias: Tensor | None, tri: Triangle, rows: slice,
                   scale: Tensor | None = None) -> None:
    """The bias source's rows get `bias` (times scale[pos] (P,) after a post-norm)."""
    if bias is None or tri.bias_rows is None:
        return
    lo, hi = _overlap(rows, tri.bias_rows)
    if lo < hi:
        if scale is None:
            delta[lo - rows.start:hi - rows.start] += bias
        else:
            delta[lo - rows.start:hi - rows.start] += scale[tri.pos[lo:hi]].unsqueeze(1) * bias


def chunks(T: int, size: int):
    for a in range(0, T, size):
        yield slice(a, min(a + size, T))


# ----------------------------------------------------------------------------- statistics


class SublayerStats:
    """Norms and shares of one sublayer, for one grouping of the sources.

    A grouping maps each source to a group (S,) -> G; None is the identity. Grouped
    vectors are summed *before* norms are taken.
    """

    def __init__(self, L: int, tri: Triangle, grouping: Tensor | None, r_dtype):
        self.tri, self.grouping = tri, grouping
        self.G = tri.S if grouping is None else int(grouping.max()) + 1
        shape = (L, 2, tri.P, self.G)
        self.norm = torch.zeros(shape, dtype=r_dtype)
        self.delta_norm = torch.zeros(shape, dtype=r_dtype)
        self.proj = torch.zeros(shape, dtype=r_dtype)
        self.prev = None  # the previous grouped state (P·G, d), for grouped deltas

    def grouped(self, C: Tensor) -> Tensor:
        """Σ of source vectors within each group, per position.   (T, d) -> (P·G, d)"""
        tri = self.tri
        index = tri.pos * self.G + self.grouping[tri.src]
        return C.new_zeros(tri.P * self.G, C.shape[1]).index_add_(0, index, C)

    def start(self, C: Tensor) -> None:
        if self.grouping is not None:
            self.prev = self.grouped(C)

    def record_rows(self, l: int, k: int, rows: slice, norm: Tensor, delta_norm: Tensor,
                    proj: Tensor) -> None:
        """Identity grouping: per-row statistics straight into the (P, S) tables."""
        tri, dt = self.tri, self.norm.dtype
        pos, src = tri.pos[rows].cpu(), tri.src[rows].cpu()
        self.norm[l, k][pos, src] = norm.cpu().to(dt)
        self.delta_norm[l, k][pos, src] = delta_norm.cpu().to(dt)
        self.proj[l, k][pos, src] = proj.cpu().to(dt)

    def record_grouped(self, l: int, k: int, C: Tensor, r_unit: Tensor) -> None:
        P, G = self.tri.P, self.G
        Cg = self.grouped(C)
        self.norm[l, k] = torch.linalg.vector_norm(Cg, dim=1).view(P, G).cpu().to(self.norm.dtype)
        self.delta_norm[l, k] = torch.linalg.vector_norm(Cg - self.prev, dim=1).view(P, G).cpu().to(self.norm.dtype)
        self.proj[l, k] = (Cg.view(P, G, -1) * r_unit[:, None, :]).sum(-1).cpu().to(self.norm.dtype)
        self.prev = Cg


def _unit_for_proj(r: Tensor) -> Tensor:
    """r / ‖r‖², so that ⟨c, r⟩ / ‖r‖² is one dot product per row.   (P, d)"""
    return r / r.pow(2).sum(-1, keepdim=True)


def _relative_error(C: Tensor, r: Tensor, tri: Triangle) -> float:
    """max_p ‖Σ_s c[p, s] − r[p]‖ / ‖r[p]‖: the sum identity. Where r[p] is exactly zero (a
    token whose embedding row is zero, e.g. a pad id), the absolute error, not 0/0 = NaN."""
    total = C.new_zeros(r.shape).index_add_(0, tri.pos, C)
    norm = torch.linalg.vector_norm(r, dim=1)
    return float((torch.linalg.vector_norm(total - r, dim=1) / torch.where(norm > 0, norm, 1.0)).max())


# ----------------------------------------------------------------------------- per-head parts


class HeadStats:
    """The attention block's write, split by query head, for one grouping of the sources.

    o_proj's input is the H heads side by side, so its weight splits into column blocks,
    W_o = [W_o,0 | … | W_o,H-1] with W_o,h (d, hd), and for every row (p, s):

        write[p, s] = W_o · O[p, s] (+ b_o)  =  Σ_h W_o,h · O_h[p, s] (+ b_o)
        part_h[p, s] = W_o,h · O_h[p, s]                 (d,)   O_h = O[:, h·hd:(h+1)·hd]

    exactly. b_o comes from no head: it goes to a pseudo-head H ("o_proj bias"), present
    only when o_proj has a bias, and non-zero only for the bias source. Only the norm and
    the signed share of each part are kept, so the (T, H, d) parts never exist:

        ‖part_h‖          = ‖R_h O_h‖,  W_o,h = Q_h R_h      R_h (hd, hd): T·H·hd² MACs in all
        ⟨part_h, r⟩/‖r‖²  = O_h · (W_o,hᵀ r/‖r‖²)[p]      (P, H, hd): one gather per row

    r is the real residual after the attention block (resid_mid), as for attn_proj, so
    Σ_h share_h is the share of what the block wrote for s. Grouped sources sum O first
    (part_h is linear in O). `write_*` is the same for the head's whole write at p, all
    sources together: O summed over sources is exactly the head's real output there, which
    is what `head_outputs` computes, from the real residual.
    Tables: norm, proj (L, H', P, G); write_norm, write_proj (L, H', P); H' = H (+ 1).
    """

    def __init__(self, L: int, n_heads: int, o_bias: bool, tri: Triangle,
                 grouping: Tensor | None, r_dtype):
        self.tri, self.grouping, self.H = tri, grouping, n_heads
        self.G = tri.S if grouping is None else int(grouping.max()) + 1
        Hx = n_heads + int(o_bias)
        self.norm = torch.zeros(L, Hx, tri.P, self.G, dtype=r_dtype)
        self.proj = torch.zeros(L, Hx, tri.P, self.G, dtype=r_dtype)
        self.write_norm = torch.zeros(L, Hx, tri.P, dtype=r_dtype)
        self.write_proj = torch.zeros(L, Hx, tri.P, dtype=r_dtype)
        self._pos = torch.arange(tri.P, device=tri.pos.device)
        if grouping is not None:
            self._group = grouping.tolist()
            self._pos_g = self._pos.repeat_interleave(self.G)

    @staticmethod
    def layer_maps(lw: LayerWeights, r_unit: Tensor) -> tuple[Tensor, Tensor]:
        """Per layer: Rt (H, hd, hd) with ‖W_o,h x‖ = ‖x Rt_h‖, and R (P, H·hd) = r/‖r‖² · W_o.

        Rt_h = R_hᵀ from W_o,h = Q_h R_h (QR, Q_h orthonormal columns): the norm of a
        (hd,) vector instead of a d-vector, with no cancellation (x Gram xᵀ would have some),
        and exact zeros for a head whose columns are zero."""
        d, H = lw.Wo.shape[0], lw.n_heads
        Rt = getattr(lw, "_head_rt", None)                              # weights only: once per layer
        if Rt is None:
            Wh = lw.Wo.view(d, H, -1).permute(1, 0, 2)                 # (H, d, hd)
            Rt = lw._head_rt = torch.linalg.qr(Wh, mode="r").R.transpose(1, 2)
        return Rt, r_unit @ lw.Wo

    @staticmethod
    def metrics(X: Tensor, pos: Tensor, Rt: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
        """‖W_o,h x_h‖ and ⟨W_o,h x_h, r[pos]⟩/‖r‖² per row and head.   (N, H·hd) -> (H, N) ×2"""
        H, hd = Rt.shape[0], Rt.shape[1]
        Xh = X.view(-1, H, hd).transpose(0, 1)                         # (H, N, hd), a view
        norm = torch.linalg.vector_norm(torch.bmm(Xh, Rt), dim=-1)      # (H, N)
        proj = torch.index_select(R, 0, pos).mul_(X).view(-1, H, hd).sum(-1).T   # (H, N)
        return norm, proj

    def record(self, l: int, O: Tensor, whole: Tensor, lw: LayerWeights, r_unit: Tensor,
               rows_of=chunks, bias_scale: Tensor | None = None) -> None:
        """All statistics of layer l from the mixed heads O (T, H·hd) and the heads' real
        outputs `whole` (P, H·hd) = Σ_s O[p, s] (see head_outputs). bias_scale (P,): the
        attention post-norm's 1/rms per position, which scales b_o too (O already has it)."""
        tri, G, H, P = self.tri, self.G, self.H, self.tri.P
        Rt, R = self.layer_maps(lw, r_unit)
        dt = self.norm.dtype
        if self.grouping is None:
            for rows in rows_of(tri.T):
                norm, proj = self.metrics(O[rows], tri.pos[rows], Rt, R)
                pos, src = tri.pos[rows].cpu(), tri.src[rows].cpu()
                self.norm[l, :H][:, pos, src] = norm.cpu().to(dt)
                self.proj[l, :H][:, pos, src] = proj.cpu().to(dt)
        else:
            Og = O.new_zeros(P, G, O.shape[1])                          # (P, G, H·hd)
            for s in range(tri.S):          # a source's rows are consecutive positions: no scatter
                Og[tri.start[s]:, self._group[s]] += O[tri.offset[s]:tri.offset[s + 1]]
            norm, proj = self.metrics(Og.view(P * G, -1), self._pos_g, Rt, R)
            self.norm[l, :H] = norm.view(H, P, G).cpu().to(dt)
            self.proj[l, :H] = proj.view(H, P, G).cpu().to(dt)
        norm, proj = self.metrics(whole, self._pos, Rt, R)
        self.write_norm[l, :H], self.write_proj[l, :H] = norm.cpu().to(dt), proj.cpu().to(dt)
        if lw.bo is not None:                                           # the o_proj bias pseudo-head
            b_norm = torch.linalg.vector_norm(lw.bo)
            b_proj = r_unit @ lw.bo                                     # (P,)
            if bias_scale is not None:
                b_norm, b_proj = b_norm * bias_scale, b_proj * bias_scale
            b_norm, b_proj = b_norm.cpu().to(dt), b_proj.cpu().to(dt)
            self.norm[l, H, :, G - 1], self.proj[l, H, :, G - 1] = b_norm, b_proj
            self.write_norm[l, H], self.write_proj[l, H] = b_norm, b_proj


def head_outputs(x: Tensor, scale1: Tensor | None, pattern: Tensor, lw: LayerWeights) -> Tensor:
    """The heads' real outputs, o_proj's input: A_h · V_g(h) from the real residual x
    (with a post-norm, `pattern` carries its 1/rms per query row, as in decompose_stack).
    (P, d) -> (P, H·hd). By the sum identity this is Σ_s O[p, s], for P·d·d_kv + H·P²·hd
    multiply-adds instead of a pass that sums the (T, H·hd) rows by position."""
    P, H, n_kv = x.shape[0], lw.n_heads, lw.n_kv
    V = (x if scale1 is None else x * scale1.unsqueeze(1)) @ lw.Wv.T   # (P, d_kv); None: no pre-norm
    if lw.bv is not None:
        V = V + lw.bv
    hd = V.shape[1] // n_kv
    Vg = V.view(P, n_kv, 1, hd).permute(1, 2, 0, 3)                    # (kv, 1, P, hd)
    out = pattern.view(n_kv, H // n_kv, P, P) @ Vg                     # (kv, rep, P, hd)
    return out.reshape(H, P, hd).transpose(0, 1).reshape(P, H * hd)


# ----------------------------------------------------------------------------- the whole stack


@dataclass
class EngineResult:
    stats: list[SublayerStats]     # one per grouping, (L, 2, P, G) arrays
    embed_norm: Tensor             # (P,)
    recon_error: Tensor            # (L, 2)
    final: Tensor                  # (T, d) the packed contributions after the last layer
    late_from: int = 0             # first position whose MLP used the precomputed map (P: none)
    heads: list[HeadStats] | None = None   # one per grouping, when asked for


def decompose_stack(captured: Captured, layers: list[LayerWeights], tri: Triangle,
                    groupings: list[Tensor | None], dtype=torch.float32,
                    chunk_bytes: int = 64 << 20, progress=None,
                    late_from: int | None = None, heads: bool = False, observers=()) -> EngineResult:
    """Run the decomposition layer by layer; keep only small per-sublayer statistics.

    late_from: first position whose MLP uses the precomputed per-position map (see
    `mlp_break_even`); None picks it from the break-even, P (or more) never uses it.
    heads: also split every attention write by query head (HeadStats).
    observers: objects with .attention(l, O, lw, post1) and .mlp_rows(l, rows, delta), shown
    each layer's mixed heads and each chunk of MLP writes (paths.SourceSplit).
    """
    L, P = len(layers), tri.P
    device = layers[0].Wv.device

    def frozen(t):
        return t.to(device=device, dtype=dtype)

    d = captured.resid_pre[0].shape[-1]
    d_ff = captured.gates[0].shape[-1]
    chunk = min(tri.T, max(64, chunk_bytes // (dtype.itemsize * (d_ff + 2 * d))))
    arena = _Arena(torch.empty(0, dtype=dtype, device=device))   # scratch reused by every layer
    d_kv, d_o = layers[0].Wv.shape[0], layers[0].Wo.shape[1]
    arena.reserve(max(tri.T * (d_kv + d_o) + chunk * d, chunk * (d_ff + d)))

    # Layer 0: each position holds only its own embedding.
    emb = frozen(captured.resid_pre[0])                                # (P, d)
    C = torch.zeros(tri.T, d, dtype=dtype, device=device)               # (T, d)
    diagonal = torch.tensor([tri.offset[s] for s in range(P)], device=device)
    C[diagonal] = emb
    stats = [SublayerStats(L, tri, g, torch.float32) for g in groupings]
    head_stats = [HeadStats(L, layers[0].n_heads, layers[0].bo is not None, tri, g, torch.float32)
                  for g in groupings] if heads else []
    for st in stats:
        st.start(C)
    errors = torch.zeros(L, 2)
    if late_from is None:
        late_from = first_late_position(d, d_ff, tri)
    late_from = min(late_from, P)
    # MLP rows that go the direct way (all of them for a short prompt), and the rows of each
    # position past break-even, which go through that position's precomputed map.
    direct = _direct_rows(tri, late_from, chunk) if late_from < P else list(chunks(tri.T, chunk))
    late = _late_rows(tri, late_from)

    for l, lw in enumerate(layers):
        # --- attention: values of every (position, source) row, mixed by the frozen pattern
        scale1 = norm_scale(frozen(captured.resid_pre[l]), lw.eps1)
        post1 = _post_scale(captured.attn_out, l, lw.eps_post1, frozen)
        pattern = frozen(captured.patterns[l])
        if post1 is not None:                   # 1/rms_post[p] on query row p: O comes out scaled
            pattern = pattern * post1.unsqueeze(1)                     # (H, P, P)
        V_buf, O_buf, delta_buf = arena.views((tri.T, lw.Wv.shape[0]), (tri.T, lw.Wo.shape[1]),
                                              (chunk, d))
        V = attention_values(C, lw, scale1, tri, V_buf)
        O = mix_heads(V, pattern, lw, tri, O_buf)
        del V, V_buf
        r = frozen(captured.resid_mid[l])
        r_unit = _unit_for_proj(r)
        for rows in chunks(tri.T, chunk):
            delta = attention_out(O, lw, tri, rows, delta_buf[:rows.stop - rows.start], post1)
            C[rows] += delta
            _record_rows(stats, l, 0, C[rows], delta, r_unit, rows)
        if head_stats:                          # the same write, split by head (O is still here)
            whole = head_outputs(frozen(captured.resid_pre[l]), scale1, pattern, lw)
            for hs in head_stats:
                hs.record(l, O, whole, lw, r_unit, rows_of=lambda T: chunks(T, chunk), bias_scale=post1)
        for ob in observers:
            ob.attention(l, O, lw, post1)
        del O, O_buf
        _record_grouped(stats, l, 0, C, r_unit)
        errors[l, 0] = _relative_error(C, r, tri)

        # --- MLP: W_down · (g ⊙ W_up · (w2 ⊙ c / rms2)), in row chunks
        gate = frozen(captured.gates[l])
        post2 = _post_scale(captured.mlp_out, l, lw.eps_post2, frozen)
        if post2 is not None:                   # 1/rms_post[p] on gate row p: the write comes out scaled
            gate = gate * post2.unsqueeze(1)
        scale2 = norm_scale(r, lw.eps2)
        gate_scale = gate if scale2 is None else gate * scale2.unsqueeze(1)   # (P, d_ff)
        r = frozen(captured.resid_pre[l + 1]) if l + 1 < L else frozen(captured.resid_final)
        r_unit = _unit_for_proj(r)
        u_buf, delta_buf = arena.views((chunk, lw.Wup.shape[0]), (chunk, d))   # O is spent
        for rows in direct:
            n = rows.stop - rows.start
            delta = mlp_out(C, gate_scale, lw, gate, tri, rows, u_buf[:n], delta_buf[:n], post2)
            C[rows] += delta
            for ob in observers:                # before _record_rows, which overwrites delta
                ob.mlp_rows(l, rows, delta)
            _record_rows(stats, l, 1, C[rows], delta, r_unit, rows)
        if late:
            def record_late(rows, delta):
                for ob in observers:
                    ob.mlp_rows(l, rows, delta)
                _record_rows(stats, l, 1, C[rows], delta, r_unit, rows)
            _mlp_late_positions(C, gate_scale, gate, lw, tri, late, late_from, record_late,
                                post_scale=post2)
        _record_grouped(stats, l, 1, C, r_unit)
        errors[l, 1] = _relative_error(C, r, tri)
        if progress is not None:
            progress(l)

    return EngineResult(stats=stats, embed_norm=torch.linalg.vector_norm(emb, dim=1).float().cpu(),
                        recon_error=errors, final=C, late_from=late_from,
                        heads=head_stats if heads else None)


def _post_scale(outputs: list[Tensor] | None, l: int, eps: float | None, frozen) -> Tensor | None:
    """1/rms of block l's real output at each position (P,), where a post-norm follows it."""
    if eps is None:
        return None
    if outputs is None:
        raise ValueError("this model has post-norms, but the capture holds no block outputs")
    return inv_rms(frozen(outputs[l]), eps)


# ----------------------------------------------------------------------------- long prompts


def mlp_break_even(d: int, d_ff: int) -> float:
    """Sources at one position past which M_p = W_down·diag(g_p/rms_p)·W_up pays off.

    Per source row the direct MLP costs 2·d·d_ff multiply-adds; with M_p it costs d², after
    d·d_ff·d once for the position: cheaper when n·2·d·d_ff > d²·d_ff + n·d².
    """
    return d * d_ff / (2 * d_ff - d)


LATE_MARGIN = 2.0   # measured: at 1× break-even the per-position gathers and small ops ate the gain


def first_late_position(d: int, d_ff: int, tri: Triangle) -> int:
    """The first position whose source count (p + 1, + 1 with a bias source) is past
    LATE_MARGIN × break-even. SmolLM2: 2 × 355 sources, so prompts up to ~709 tokens stay direct
    (docs/history/performance-2026.md, "Long prompts", has the measurement)."""
    bias = int(tri.S > tri.P)
    return max(0, math.floor(LATE_MARGIN * mlp_break_even(d, d_ff)) - bias)


def _direct_rows(tri: Triangle, late_from: int, chunk: int) -> list[slice]:
    """Rows at positions < late_from (the first late_from − start[s] rows of each source),
    as slices of at most `chunk` rows."""
    return [slice(a, min(a + chunk, tri.offset[s] + late_from - tri.start[s]))
            for s in range(tri.S) if tri.start[s] < late_from
            for a in range(tri.offset[s], tri.offset[s] + late_from - tri.start[s], chunk)]


def _late_rows(tri: Triangle, late_from: int) -> list[Tensor]:
    """For each position p ≥ late_from, its rows: one per source present (the bias source last)."""
    start = torch.tensor(tri.start)
    offset = torch.tensor(tri.offset[:-1])
    out = []
    for p in range(late_from, tri.P):
        present = start <= p
        out.append((offset[present] + p - start[present]).to(tri.pos.device))
    return out


def _mlp_late_positions(C, gate_scale, gate, lw, tri, late, late_from, record, batch: int = 8,
                        post_scale=None):
    """The MLP of each position past break-even through its own d×d map M_p, built `batch`
    positions at a time (the earlier rows went the direct way)."""
    bias_src = tri.bias_rows is not None
    for p0 in range(late_from, tri.P, batch):
        p1 = min(p0 + batch, tri.P)
        M = torch.matmul(lw.Wdown.unsqueeze(0) * gate_scale[p0:p1].unsqueeze(1), lw.Wup)   # (B, d, d)
        for j, p in enumerate(range(p0, p1)):
            idx = late[p - late_from]
            delta = C.index_select(0, idx) @ M[j].T
            if bias_src:
                is_bias = torch.zeros(idx.numel(), dtype=torch.bool, device=idx.device)
                is_bias[-1] = True
                _bias_terms(delta, is_bias, tri.pos[idx], gate, lw, post_scale)
            C.index_add_(0, idx, delta)
            record(idx, delta)


def _bias_terms(delta, is_bias, pos, gate, lw, post_scale=None):
    """The bias source's own MLP terms: W_down·(b_up ⊙ g) and b_down (times 1/rms_post)."""
    if not bool(is_bias.any()):
        return
    extra = torch.zeros_like(delta[is_bias])
    if lw.bup is not None:
        extra += (lw.bup * gate[pos[is_bias]]) @ lw.Wdown.T
    if lw.bdown is not None:
        extra += lw.bdown if post_scale is None else post_scale[pos[is_bias]].unsqueeze(1) * lw.bdown
    delta[is_bias] += extra


def _record_rows(stats, l, k, C_rows, delta, r_unit, rows):
    """Norms of c and of the block's write, and the share ⟨c, r⟩/‖r‖², per packed row.
    Overwrites `delta` (used as the gather buffer once its norm is taken)."""
    if not any(st.grouping is None for st in stats):
        return
    norm = torch.linalg.vector_norm(C_rows, dim=1)
    delta_norm = torch.linalg.vector_norm(delta, dim=1)
    proj = _rowwise_dot(C_rows, r_unit, stats[0].tri, rows, scratch=delta)
    for st in stats:
        if st.grouping is None:
            st.record_rows(l, k, rows, norm, delta_norm, proj)


def _record_grouped(stats, l, k, C, r_unit):
    for st in stats:
        if st.grouping is not None:
            st.record_grouped(l, k, C, r_unit)

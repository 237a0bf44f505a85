"""The unembedding side of the decomposition (engine.py): the final norm's frozen scale, the
per-source logit attribution, the reconstructed logits and the logit lens."""
from __future__ import annotations

import torch
from torch import Tensor

from .engine import Triangle, inv_rms
from .weights import Unembed


def final_scale(resid_final: Tensor, unembed: Unembed) -> Tensor:
    """w_f / rms_f[p], the final norm with its real per-position scale.   (P, d)"""
    return unembed.w_norm * inv_rms(resid_final, unembed.eps).unsqueeze(1)


def logit_attribution(C: Tensor, tri: Triangle, scale: Tensor, unembed: Unembed,
                      token_ids: Tensor, grouping: Tensor | None) -> Tensor:
    """Per-source share of the logit of token_ids[p, j] at p, final scale frozen.

    (T, d), token_ids (P, k) -> (P, k, G), summing over G to the logit (bias included).
    """
    P, k = token_ids.shape
    G = tri.S if grouping is None else int(grouping.max()) + 1
    vocab, col = torch.unique(token_ids, return_inverse=True)          # (K,), (P, k)
    U = unembed.W_U[vocab]                                              # (K, d)
    per_row = ((C * scale[tri.pos]) @ U.T)                              # (T, K)
    picked = per_row.gather(1, col[tri.pos])                            # (T, k)
    gsrc = tri.src if grouping is None else grouping[tri.src]
    out = C.new_zeros(P * G, k).index_add_(0, tri.pos * G + gsrc, picked).view(P, G, k)
    if unembed.b_U is not None:
        out[:, G - 1, :] += unembed.b_U[token_ids]   # the bias group is always last
    return out.permute(0, 2, 1)


def mean_logit_parts(C: Tensor, tri: Triangle, scale: Tensor, unembed: Unembed,
                     grouping: Tensor | None) -> Tensor:
    """Per-source share of the mean logit over the vocabulary at p: (c·scale)·mean_v W_U[v]
    (+ mean b_U for the bias group).   (T, d) -> (P, G), summing over G to the mean logit.

    logit_attribution minus this is the *demeaned* attribution, against u = W_U[t] − mean_v W_U[v]:
    what a source does for t against the other tokens, not the part it adds to every logit
    alike; it sums to the logit minus the mean logit. One (T, d) · (d,) product.
    """
    G = tri.S if grouping is None else int(grouping.max()) + 1
    per_row = (C * scale[tri.pos]) @ unembed.W_U_mean               # (T,)
    gsrc = tri.src if grouping is None else grouping[tri.src]
    out = C.new_zeros(tri.P * G).index_add_(0, tri.pos * G + gsrc, per_row).view(tri.P, G)
    if unembed.b_U is not None:
        out[:, G - 1] += unembed.b_U.mean()
    return out


def reconstructed_logits(C: Tensor, tri: Triangle, scale: Tensor, unembed: Unembed) -> Tensor:
    """Logits from Σ_s c[p, s] with the final norm's scale frozen.   (P, V)"""
    total = C.new_zeros(tri.P, C.shape[1]).index_add_(0, tri.pos, C)
    logits = (total * scale) @ unembed.W_U.T
    return logits if unembed.b_U is None else logits + unembed.b_U


LENS_VOCAB_BLOCK = 4096   # vocabulary columns per lens matmul: a (1024, 4096) slab, 16 MB


def logit_lens(resid: Tensor, unembed: Unembed, k: int, vocab_block: int = LENS_VOCAB_BLOCK,
               group: int = 16) -> tuple[Tensor, Tensor]:
    """Top-k tokens and probabilities of final_norm(r) @ W_Uᵀ, per row.   (N, d) -> (N, k) ×2

    The vocabulary is walked in blocks: each (N, block) slab of logits is written once into
    one reused buffer, then read for its top-k and once for an online log-sum-exp (running
    max m, running Σ exp(l − m)), so the (N, V) logits never exist.
    """
    x = (resid.to(unembed.W_U.dtype) * final_scale(resid.to(unembed.W_U.dtype), unembed))
    N, V = x.shape[0], unembed.W_U.shape[0]
    best = x.new_full((N, k), float("-inf"))
    best_ids = torch.zeros(N, k, dtype=torch.int64, device=x.device)
    m = x.new_full((N, 1), float("-inf"))
    total = x.new_zeros(N, 1)
    slab = x.new_empty(N * min(vocab_block, V))
    for v0 in range(0, V, vocab_block):
        W = unembed.W_U[v0:v0 + vocab_block]
        logits = torch.mm(x, W.T, out=slab[:N * W.shape[0]].view(N, W.shape[0]))
        if unembed.b_U is not None:
            logits += unembed.b_U[v0:v0 + vocab_block]
        top, ids = _block_topk(logits, k, group)
        merged, pick = torch.cat([best, top], 1).topk(k, dim=-1)
        best_ids = torch.cat([best_ids, ids + v0], 1).gather(1, pick)
        best = merged
        m_new = torch.maximum(m, top[:, :1])
        total = total * torch.exp(m - m_new) + logits.sub_(m_new).exp_().sum(-1, keepdim=True)
        m = m_new
    return best_ids, torch.exp(best - (m + total.log()))


def _block_topk(logits: Tensor, k: int, group: int) -> tuple[Tensor, Tensor]:
    """logits.topk(k) per row, through group maxima.   (N, B) -> (N, k) values, ids

    The columns are split into `group`-sized sets (column j belongs to set j mod B/group).
    The k largest entries of a row lie in the k sets with the largest maxima (each of
    those maxima is ≥ anything outside them), so only those k·group candidates are
    ranked: one vectorized max over the block instead of a per-row selection over B.
    """
    N, B = logits.shape
    n_sets = B // group
    if B % group or n_sets < k:
        return logits.topk(min(k, B), dim=-1)
    set_max = logits.view(N, group, n_sets).amax(1)                    # (N, n_sets)
    _, sets = set_max.topk(k, dim=-1, sorted=False)                    # (N, k)
    cand = (sets.unsqueeze(-1) + torch.arange(group, device=logits.device) * n_sets).view(N, -1)
    top, pick = logits.gather(1, cand).topk(k, dim=-1)                 # (N, k)
    return top, cand.gather(1, pick)


def lens_track(resid: Tensor, unembed: Unembed, token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """Probability and rank of each of `token_ids` in the logit lens of every row.

    (N, d) residuals (one position, every sublayer: N = 2L) -> probs (m, N), ranks (m, N).
    rank = 1 + the number of tokens with a strictly larger lens logit (1: the lens's top token).
    The N rows' full logits are formed at once: N · V values (60 × 49152 × 4 B = 12 MB for the
    default model), small beside the logit lens itself.
    """
    x = resid.to(unembed.W_U.dtype)
    logits = (x * final_scale(x, unembed)) @ unembed.W_U.T                 # (N, V)
    if unembed.b_U is not None:
        logits = logits + unembed.b_U
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=logits.device)
    picked = logits[:, ids]                                                 # (N, m)
    probs = torch.exp(picked - torch.logsumexp(logits, -1, keepdim=True))
    ranks = 1 + (logits.unsqueeze(1) > picked.unsqueeze(2)).sum(-1)        # (N, m)
    return probs.T, ranks.T

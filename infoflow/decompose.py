"""The public entry point: prompt -> one traced forward pass -> Decomposition(s)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import DEFAULT_MAX_TOKENS
from .engine import decompose_stack, triangle
from .logits import (LENS_VOCAB_BLOCK, final_scale, lens_track, logit_attribution, logit_lens, mean_logit_parts,
                     reconstructed_logits)
from .model import LoadedModel, load_model
from .result import Decomposition, Heads
from .tokens import display_tokens, word_groups
from .weights import extract_weights, has_bias_source
from .trace import capture, wrap

DEFAULT_MAX_MEMORY = 4 << 30     # working memory beyond the model's weights
CHUNK_BYTES = 64 << 20           # one MLP row chunk
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


class InputError(ValueError):
    """The prompt or its options cannot be decomposed; the message says what to change."""


# ----------------------------------------------------------------------------- models

_loaded: dict[tuple, LoadedModel] = {}


def get_model(model: str | LoadedModel | None = None, **load_kwargs) -> LoadedModel:
    """A loaded model; strings are loaded once per process and reused."""
    if isinstance(model, LoadedModel):
        return model
    from .model import fingerprint

    key = (model, tuple(sorted(load_kwargs.items())))
    kept = _loaded.get(key)
    if kept is not None and fingerprint(model, load_kwargs.get("cache"), convert=False) not in (
            None, kept.info["fingerprint"]):
        kept = None                      # its weights changed on disk since: load them again
    if kept is None:
        _loaded[key] = kept = load_model(model, **load_kwargs)
    return kept


# ----------------------------------------------------------------------------- tokens


def tokenize(lm: LoadedModel, prompt: str, *, chat: bool = False,
             max_tokens: int = DEFAULT_MAX_TOKENS) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("The prompt is empty: give some text to decompose.")
    tok = lm.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise InputError(f"{lm.info['id']} has no chat template; drop the chat option.")
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    ids = [int(i) for i in ids]
    if len(ids) > max_tokens:
        raise InputError(f"The prompt has {len(ids)} tokens; the limit is {max_tokens}. Shorten it, "
                         "or raise the limit with --max-tokens (max_tokens= in Python).")
    return ids


def resolve_groups(groups, tokens: list[str], special: list[bool]) -> tuple[str, list[int]]:
    """('tokens'|'words'|'custom', group index per token, numbered 0.. in order of first use)."""
    P = len(tokens)
    if groups is None or groups == "tokens":
        return "tokens", list(range(P))
    if groups == "words":
        return "words", word_groups(tokens, special)
    if isinstance(groups, str):
        raise InputError(f"groups must be None, 'words' or a list of {P} group ids, not {groups!r}.")
    groups = list(groups)
    if len(groups) != P:
        raise InputError(f"groups has {len(groups)} entries but the prompt has {P} tokens: "
                         f"{tokens!r}. Give one group id per token.")
    first_use: dict = {}
    return "custom", [first_use.setdefault(g, len(first_use)) for g in groups]


def _source_labels(tokens: list[str], groups: list[int]) -> list[str]:
    labels = [""] * (max(groups) + 1)
    for t, g in zip(tokens, groups):
        labels[g] += t
    return labels


# ----------------------------------------------------------------------------- estimates


def estimate(P: int, info: dict, *, logit_lens: bool = True, bias: bool = False,
             itemsize: int = 4, heads: bool = True) -> dict:
    """Working memory (bytes, beyond the weights) and multiply-adds of one decomposition."""
    d, dff, L, V = info["d_model"], info["d_mlp"], info["layers"], info["vocab"]
    hd = info.get("recipe", {}).get("head_dim") or d // info["heads"]   # Gemma: H·hd ≠ d
    d_kv, d_o = info["kv_heads"] * hd, info["heads"] * hd
    S = P + int(bias)
    T = P * (P + 1) // 2 + (P if bias else 0)
    engine = itemsize * T * (d + d_o + d_kv) + CHUNK_BYTES          # C, O, V and one chunk
    captured = 4 * L * (info["heads"] * P * P + P * dff + 2 * P * d) + 4 * P * V
    stats = 4 * 3 * L * 2 * P * S
    if heads:                                   # norm and share per head, + per-head totals
        stats += 4 * 2 * L * (info["heads"] + int(bias)) * P * (S + 1)
    lens = 4 * min(2 * L * P, LENS_ROWS) * min(V, LENS_VOCAB_BLOCK) if logit_lens else 0   # one slab
    macs = L * (T * (d * d_kv + d * d_o + 2 * d * dff) + d_o * P * (P + 1) * (P + 2) // 6)
    if logit_lens:
        macs += 2 * L * P * d * V
    return {"bytes": engine + captured + stats + lens, "macs": macs}


_gemm_rate_cache: list[float] = []


def gemm_rate() -> float:
    """Multiply-adds per second of a float32 matmul on this machine (measured once)."""
    if not _gemm_rate_cache:
        a = torch.randn(768, 768)
        a @ a
        t = time.perf_counter()
        for _ in range(4):
            a @ a
        _gemm_rate_cache.append(4 * 768 ** 3 / (time.perf_counter() - t))
    return _gemm_rate_cache[0]


def check_budget(P: int, lm: LoadedModel, max_memory: int | None, logit_lens: bool,
                 itemsize: int = 4, heads: bool = True) -> dict:
    est = estimate(P, lm.info, logit_lens=logit_lens, itemsize=itemsize, heads=heads)
    est["seconds"] = est["macs"] / gemm_rate() if lm.device.type == "cpu" else None
    if max_memory is not None and est["bytes"] > max_memory:
        raise InputError(
            f"Decomposing {P} tokens needs about {est['bytes'] / 2**30:.2f} GiB of working memory "
            f"(and ~{est['macs'] / 1e9:.0f} G multiply-adds), over the budget of "
            f"{max_memory / 2**30:.2f} GiB. Raise it with --max-memory (max_memory= in Python), "
            "skip the logit lens or the per-head data (heads=False), or shorten the prompt.")
    return est


# ----------------------------------------------------------------------------- decompose


def decompose(prompt: str, model: str | LoadedModel | None = None, *, groups=None,
              dtype: str = "float32", logit_lens: bool = True, top_k: int = 5,
              chat: bool = False, max_tokens: int = DEFAULT_MAX_TOKENS,
              max_memory: int | None = DEFAULT_MAX_MEMORY, heads: bool = True) -> Decomposition:
    """Split the residual stream of `prompt` into one vector per source token, exactly.

    groups: None (each token), "words", or one group id per token.
    dtype: the decomposition's float type, "float32" or "float64".
    heads: also split every attention write by query head (`d.heads`).
    """
    return decompose_variants(prompt, model, {"main": groups}, dtype=dtype, logit_lens=logit_lens,
                              top_k=top_k, chat=chat, max_tokens=max_tokens,
                              max_memory=max_memory, heads=heads)["main"]


def decompose_variants(prompt: str, model, variants: dict[str, object], *, dtype: str = "float32",
                       logit_lens: bool = True, top_k: int = 5, chat: bool = False,
                       max_tokens: int = DEFAULT_MAX_TOKENS,
                       max_memory: int | None = DEFAULT_MAX_MEMORY,
                       late_from: int | None = None, heads: bool = True,
                       graphs=None, graph_options: dict | None = None,
                       lens_target: int | None = None) -> dict[str, Decomposition]:
    """One forward pass, several groupings of the sources: {name: groups} -> {name: Decomposition}.

    late_from: first position whose MLP goes through the precomputed per-position map
    (None: where that is cheaper, see engine.mlp_break_even).
    graphs: paths.TargetSpec list; the first variant's Decomposition gets `.graphs`, one
    attribution graph each (paths.py), split by that variant's sources.
    lens_target: a token id (the prompt's declared target) whose logit lens at the last position
    is kept beside the top-k predictions' (Decomposition.lens_track_*).
    """
    if dtype not in PRECISIONS:
        raise InputError(f"dtype must be 'float32' or 'float64', not {dtype!r}.")
    fdtype = PRECISIONS[dtype]
    lm = get_model(model)
    timings = {}
    t0 = time.perf_counter()
    ids = tokenize(lm, prompt, chat=chat, max_tokens=max_tokens)
    tokens = display_tokens(lm.tokenizer, ids)
    special_ids = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
    special = [i in special_ids for i in ids]
    resolved = {name: resolve_groups(g, tokens, special) for name, g in variants.items()}
    timings["estimate"] = check_budget(len(ids), lm, max_memory, logit_lens,
                                       itemsize=torch.finfo(fdtype).bits // 8, heads=heads)

    input_ids = torch.tensor([ids], device=lm.device)
    captured = capture(_nnsight(lm), input_ids)
    timings["trace"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    layers, unembed = _weights(lm, fdtype)
    bias = has_bias_source(layers, unembed)
    P = len(ids)
    tri = triangle(P, bias, device=layers[0].Wv.device)
    groupings = []
    for kind, g in resolved.values():
        if kind == "tokens":
            groupings.append(None)
        else:
            index = g + ([max(g) + 1] if bias else [])
            groupings.append(torch.tensor(index, device=tri.pos.device))
    graph_job = _graph_job(lm, captured, layers, unembed, tri, groupings[0], graphs, fdtype) if graphs else None
    result = decompose_stack(captured, layers, tri, groupings, dtype=fdtype,
                             chunk_bytes=min(CHUNK_BYTES, (max_memory or CHUNK_BYTES) // 8),
                             late_from=late_from, heads=heads,
                             observers=[graph_job["split"]] if graph_job else ())
    timings["decompose"] = time.perf_counter() - t1
    timings["ordering"] = ("direct" if result.late_from >= P else
                           f"precomputed W_down·diag(g)·W_up for positions {result.late_from}..{P - 1}")

    t2 = time.perf_counter()
    logits = captured.logits.to(fdtype)
    scale = final_scale(captured.resid_final.to(fdtype), unembed)
    top_logits, pred_ids = logits.topk(top_k, dim=-1)                    # (P, k)
    pred_probs = torch.exp(top_logits - torch.logsumexp(logits, -1, keepdim=True))
    logit_error = float((reconstructed_logits(result.final, tri, scale, unembed) - logits).abs().max())
    attributions = [logit_attribution(result.final, tri, scale, unembed, pred_ids, g) for g in groupings]
    # the vocabulary-mean logit's part per source, (P, G) per grouping (logits.mean_logit_parts):
    # the top prediction's attribution minus it is its demeaned attribution
    mean_parts = [mean_logit_parts(result.final, tri, scale, unembed, g) for g in groupings]
    top_demeaned = [a[:, 0] - m for a, m in zip(attributions, mean_parts)]
    del result.final
    timings["logits"] = time.perf_counter() - t2

    lens_ids = lens_probs = None
    if logit_lens:
        t3 = time.perf_counter()
        lens_ids, lens_probs = _logit_lens(captured, unembed, top_k)
        timings["logit_lens"] = time.perf_counter() - t3
    track = _lens_track(captured, unembed, pred_ids[-1].tolist(), lens_target) if logit_lens else None
    timings["total"] = time.perf_counter() - t0

    used = set(pred_ids.flatten().tolist()) | set(track["lens_track_ids"].tolist() if track else [])
    if lens_ids is not None:
        used |= set(np.unique(lens_ids).tolist())
    used = sorted(used)
    token_text = dict(zip(used, display_tokens(lm.tokenizer, used)))

    head_data = _heads(result, captured, layers) if heads else [None] * len(groupings)
    out = {}
    for (name, (kind, g)), st, attr, hd, dm, mp in zip(resolved.items(), result.stats, attributions, head_data,
                                                       top_demeaned, mean_parts):
        sources = _source_labels(tokens, g) + (["bias"] if bias else [])
        arr = {k: getattr(st, k).numpy() for k in ("norm", "delta_norm", "proj")}
        out[name] = Decomposition(
            prompt=prompt, tokens=tokens, token_ids=np.array(ids, dtype=np.int64), sources=sources,
            groups=np.array(g, dtype=np.int64), grouping=kind,
            attn_norm=arr["norm"][:, 0], mlp_norm=arr["norm"][:, 1],
            attn_delta_norm=arr["delta_norm"][:, 0], mlp_delta_norm=arr["delta_norm"][:, 1],
            attn_proj=arr["proj"][:, 0], mlp_proj=arr["proj"][:, 1],
            embed_norm=result.embed_norm.numpy(),
            pred_ids=pred_ids.cpu().numpy(), pred_probs=pred_probs.float().cpu().numpy(),
            pred_logits=top_logits.float().cpu().numpy(), logit_attr=attr.float().cpu().numpy(),
            top_attr_demeaned=dm.float().cpu().numpy(), logit_mean_last=mp[-1].float().cpu().numpy(),
            **(track or {}),
            recon_error=result.recon_error.numpy(), logit_error=logit_error,
            lens_ids=lens_ids, lens_probs=lens_probs, token_text=token_text,
            model=dict(lm.info), precision=dtype, has_bias=bias, timings=dict(timings), head_data=hd)
    if graph_job:
        t4 = time.perf_counter()
        first = next(iter(out.values()))
        first.graphs = _graphs(lm, captured, layers, unembed, graph_job, first, bias, fdtype,
                               graph_options or {})
        first.timings["graph"] = graph_job["seconds"] + time.perf_counter() - t4
    return out


def _graph_job(lm, captured, layers, unembed, tri, grouping, specs, fdtype) -> dict:
    """Before the engine runs: each target's gradients, and the observer that splits every
    node's effect by source while the engine has the packed parts in hand."""
    from . import paths
    t = time.perf_counter()
    logits = captured.logits.to(fdtype)
    targets = [paths.resolve_target(s, lm.tokenizer, logits, unembed) for s in specs]
    prep = paths.prepare(captured, layers, fdtype)
    grads = paths.gradients(prep.fl, layers, unembed, targets, captured.resid_final.to(fdtype))
    G = tri.S if grouping is None else int(grouping.max()) + 1
    split = paths.SourceSplit(grads, layers, tri, grouping, G)
    return {"targets": targets, "prep": prep, "grads": grads, "split": split,
            "seconds": time.perf_counter() - t}


def _graphs(lm, captured, layers, unembed, job, d: Decomposition, bias, fdtype, options) -> list:
    from . import paths

    def text(i):
        return display_tokens(lm.tokenizer, [i])[0]
    return [paths.build_graph(captured, layers, unembed, job["prep"], tg, gr, tokens=d.tokens,
                              token_ids=d.token_ids, groups=d.groups,
                              token_text=text, has_bias=bias, dtype=fdtype, split=job["split"],
                              split_index=i, sources=d.sources, model=lm.info, **options)
            for i, (tg, gr) in enumerate(zip(job["targets"], job["grads"]))]


def graph(prompt: str, target=None, contrast=None, position: int = -1, model=None, *, groups=None,
          dtype: str = "float32", chat: bool = False, max_tokens: int = DEFAULT_MAX_TOKENS,
          max_memory: int | None = DEFAULT_MAX_MEMORY, node_threshold: float | None = None,
          edge_threshold: float | None = None):
    """The exact attribution graph of one logit (docs/graph.md): `target` (a one-token string;
    None: the top prediction) at `position`, against `contrast` (None: the demeaned logit)."""
    from . import paths
    options = {k: v for k, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold))
               if v is not None}
    d = decompose_variants(prompt, model, {"main": groups}, dtype=dtype, logit_lens=False, chat=chat,
                           max_tokens=max_tokens, max_memory=max_memory, heads=False,
                           graphs=[paths.TargetSpec(target, contrast, position)],
                           graph_options=options)["main"]
    g = d.graphs[0]
    g.decomposition = d
    return g


def _heads(result, captured, layers) -> list[Heads]:
    """engine.HeadStats (one per grouping) -> result.Heads, with the frozen patterns."""
    H = layers[0].n_heads
    labels = [str(h) for h in range(H)] + (["o_proj bias"] if layers[0].bo is not None else [])
    pattern = torch.stack([a.float().cpu() for a in captured.patterns]).numpy()   # (L, H, P, P)
    return [Heads(labels=labels, norm=hs.norm.numpy(), proj=hs.proj.numpy(),
                  write_norm=hs.write_norm.numpy(), write_proj=hs.write_proj.numpy(), pattern=pattern)
            for hs in result.heads]


# Rows per unembedding matmul: W_U (V·d) is read once per batch, not per layer, and at 1024
# rows the matmul runs near the sgemm rate (512: ~0.85 of it).
LENS_ROWS = 1024


def _logit_lens(captured, unembed, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k at every (layer, sublayer, position), in batches of LENS_ROWS residuals."""
    L, P = len(captured.resid_mid), captured.resid_final.shape[0]
    resid = torch.stack([r for l in range(L) for r in (
        captured.resid_mid[l], captured.resid_pre[l + 1] if l + 1 < L else captured.resid_final)])
    rows = resid.reshape(L * 2 * P, -1).to(unembed.W_U.device)         # (2·L·P, d)
    ids = torch.empty(rows.shape[0], k, dtype=torch.int64)
    probs = torch.empty(rows.shape[0], k)
    for a in range(0, rows.shape[0], LENS_ROWS):
        i, p = logit_lens(rows[a:a + LENS_ROWS], unembed, k)
        ids[a:a + LENS_ROWS], probs[a:a + LENS_ROWS] = i.cpu(), p.float().cpu()
    return ids.view(L, 2, P, k).numpy(), probs.view(L, 2, P, k).numpy()


def _lens_track(captured, unembed, top: list[int], target: int | None) -> dict:
    """The logit lens of the last position's top-k predictions (then the target, where it is not
    one of them) at every sublayer: Decomposition.lens_track_* fields."""
    L = len(captured.resid_mid)
    rows = torch.stack([r[-1] for l in range(L) for r in (
        captured.resid_mid[l], captured.resid_pre[l + 1] if l + 1 < L else captured.resid_final)])
    ids = list(top) + ([int(target)] if target is not None and int(target) not in top else [])
    probs, ranks = lens_track(rows.to(unembed.W_U.device), unembed, ids)
    return {"lens_track_ids": np.array(ids, dtype=np.int64),
            "lens_track_probs": probs.float().cpu().numpy().reshape(len(ids), L, 2),
            "lens_track_ranks": ranks.cpu().numpy().astype(np.int64).reshape(len(ids), L, 2),
            "lens_target": None if target is None else ids.index(int(target))}


# Per-model caches: the nnsight wrapper and the weights in each precision.
def _nnsight(lm: LoadedModel):
    if not hasattr(lm, "_nnsight"):
        lm._nnsight = wrap(lm.hf)
    return lm._nnsight


def _weights(lm: LoadedModel, dtype):
    cache = lm.__dict__.setdefault("_weights", {})
    if dtype not in cache:
        cache[dtype] = extract_weights(lm.hf, dtype=dtype, device=lm.device)
    return cache[dtype]

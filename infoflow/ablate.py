"""The ablation check: how well the frozen graph (paths.py) predicts the real model.

The frozen model is exact about itself. Whether it predicts the real model is measured: for
the graph's top head and MLP nodes, that node's write is zeroed in the real model, with
nothing frozen (a head: its slice of o_proj's input at that position; an MLP: its output
there), and the real change of T is compared with the graph's prediction, −effect(b). The
direct effect alone (what a logit lens would credit the node with) is the baseline.
Disagreement is a finding, not a bug: a real model repairs itself (a backup head takes over
when a name mover is ablated), and patterns, gates and norms move, which the frozen model
holds still.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Ablated copies of the prompt per forward pass: as many as fit TOKENS_PER_PASS tokens. On a CPU
# the check is compute-bound (~P tokens per ablation); a larger batch reads the weights fewer
# times (41 copies at P = 14: 1.55 s of CPU against 1.97 s in batches of 8). Reusing the clean
# prefix's keys and values (positions before the ablated one) was tried and saved nothing on IOI
# (2.04 s against 1.97 s): its top nodes sit at positions 0-3 as much as at the last one, and
# each position then needs its own pass.
TOKENS_PER_PASS = 2048


@dataclass
class Row:
    kind: str          # "head" or "mlp"
    layer: int
    head: int          # -1 for an MLP
    position: int
    effect: float      # the graph's total effect: it predicts ΔT = −effect
    direct: float      # the direct effect alone (the baseline's prediction: −direct)
    actual: float      # ΔT measured in the real model

    def label(self, head_labels=None) -> str:
        if self.kind == "head":
            return f"{self.layer}.{self.head}@{self.position}"
        return f"MLP {self.layer}@{self.position}"


@dataclass
class Check:
    value: float                     # T of the unablated real model, as this check measured it
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def stats(self, kind: str) -> dict:
        rows = [r for r in self.rows if r.kind == kind]
        if not rows:
            return {"n": 0}
        actual = np.array([r.actual for r in rows])
        pred = -np.array([r.effect for r in rows])
        base = -np.array([r.direct for r in rows])
        miss = np.abs(actual - pred)
        worst = [rows[i] for i in np.argsort(-miss)[:3]]
        return {"n": len(rows), "rho": spearman(pred, actual), "signs": sign_agreement(pred, actual),
                "rho_direct": spearman(base, actual), "signs_direct": sign_agreement(base, actual),
                "worst": [{"node": r.label(), "predicted": -r.effect, "actual": r.actual} for r in worst]}

    def to_dict(self) -> dict:
        return {"value": self.value, "notes": list(self.notes),
                "rows": [{"kind": r.kind, "layer": r.layer, "head": r.head, "position": r.position,
                          "effect": r.effect, "direct": r.direct, "actual": r.actual} for r in self.rows],
                "heads": _plain(self.stats("head")), "mlps": _plain(self.stats("mlp"))}

    def format(self) -> str:
        lines = [f"ablation check (real model, nothing frozen; T = {self.value:+.4f}): "
                 "predicted ΔT = −effect vs the measured ΔT"]
        for kind, name in (("head", "heads"), ("mlp", "MLPs")):
            s = self.stats(kind)
            if not s["n"]:
                continue
            lines.append(f"  {name} (top {s['n']} by |effect|): Spearman ρ {_f(s['rho'])}, signs agree "
                         f"{s['signs']:.0%}; direct effect alone: ρ {_f(s['rho_direct'])}, signs "
                         f"{s['signs_direct']:.0%}")
            lines.append("    largest misses: " + ", ".join(
                f"{w['node']} predicted {w['predicted']:+.3f}, measured {w['actual']:+.3f}" for w in s["worst"]))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.2f}"


def _plain(s: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in s.items()}


def spearman(a, b) -> float:
    """Spearman's ρ: Pearson's r of the ranks (ties share their mean rank); NaN if constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):                       # ties: their mean rank
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def sign_agreement(pred, actual) -> float:
    pred, actual = np.sign(pred), np.sign(actual)
    return float((pred == actual).mean()) if len(pred) else float("nan")


# ----------------------------------------------------------------------------- the real model


def top_nodes(g, n: int = 20) -> list[tuple[str, int, int, int]]:
    """The n head nodes (the o_proj-bias pseudo-head aside: it is no slice of o_proj's input)
    and the n MLP nodes with the largest |effect|."""
    H = len([h for h in g.head_labels if h.isdigit()])
    heads = g.heads[:, :H]
    out = []
    for i in np.argsort(-np.abs(heads).ravel(), kind="stable")[:n]:
        l, h, p = np.unravel_index(i, heads.shape)
        out.append(("head", int(l), int(h), int(p)))
    for i in np.argsort(-np.abs(g.mlp).ravel(), kind="stable")[:n]:
        l, p = np.unravel_index(i, g.mlp.shape)
        out.append(("mlp", int(l), -1, int(p)))
    return out


def target_values(hf, input_ids: torch.Tensor, g, ablations: list) -> np.ndarray:
    """T in the real model with each ablation (None: none), batched by TOKENS_PER_PASS."""
    cfg = hf.config
    H = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    out = []
    step = max(1, TOKENS_PER_PASS // input_ids.shape[1])
    for a in range(0, len(ablations), step):
        batch = ablations[a:a + step]
        hooks = []
        for b, spec in enumerate(batch):
            if spec is None:
                continue
            kind, l, h, p = spec
            layer = hf.model.layers[l]
            if kind == "head":
                hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(_zero_input(b, p, h * hd, (h + 1) * hd)))
            else:
                hooks.append(layer.mlp.register_forward_hook(_zero_output(b, p)))
        try:
            with torch.no_grad():
                ids = input_ids.expand(len(batch), -1)
                hidden = hf.model(input_ids=ids).last_hidden_state[:, g.position]    # (B, d) after the final norm
                logits = hf.lm_head(hidden).double()                                 # (B, V)
        finally:
            for hk in hooks:
                hk.remove()
        other = logits[:, g.contrast] if g.contrast is not None else logits.mean(-1)
        out.append((logits[:, g.target] - other).cpu().numpy())
    return np.concatenate(out)


def _zero_input(b, p, lo, hi):
    def hook(module, args):
        x = args[0].clone()
        x[b, p, lo:hi] = 0
        return (x,) + tuple(args[1:])
    return hook


def _zero_output(b, p):
    def hook(module, args, output):
        out = output.clone()
        out[b, p] = 0
        return out
    return hook


def ablation_check(lm, g, n: int = 20) -> "Check":
    """Ablate the top n head and n MLP nodes of graph g, one at a time, in the real model."""
    ids = torch.tensor([list(map(int, g.token_ids))], device=lm.device)
    nodes = top_nodes(g, n)
    values = target_values(lm.hf, ids, g, [None] + nodes)
    base = float(values[0])
    rows = []
    for (kind, l, h, p), v in zip(nodes, values[1:]):
        if kind == "head":
            eff, direct = float(g.heads[l, h, p]), float(g.direct["heads"][l, h, p])
        else:
            eff, direct = float(g.mlp[l, p]), float(g.direct["mlp"][l, p])
        rows.append(Row(kind, l, h, p, eff, direct, float(v) - base))
    notes = []
    if getattr(lm.hf.model.layers[0], "post_attention_layernorm", None) is not None and \
            lm.info.get("recipe", {}).get("attn_post_norm"):
        notes.append("an attention post-norm follows o_proj here (Gemma 3): zeroing one head's slice "
                     "also rescales the other heads' writes at that position, which the frozen "
                     "prediction does not include; a zeroed MLP write stays zero through its post-norm")
    return Check(base, rows, notes)

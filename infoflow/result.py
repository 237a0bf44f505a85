"""The result of one decomposition, as plain numpy arrays: no torch, no model.

`infoflow.load` builds these from data files, so reading a file never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import __version__


@dataclass
class Heads:
    """The attention writes split by query head (issue 13), for one grouping of the sources.

    (L,H',P,G) arrays are [layer, head, position, source]. Head h's part of what layer l's
    attention block wrote at p for source s is W_o,h · O_h[p, s] (o_proj's columns of head h
    times that head's values mixed by the frozen pattern); Σ_h part_h = the block's write,
    exactly. H' = H, plus one pseudo-head "o_proj bias" for models whose o_proj has a bias.
    """
    labels: list[str]                  # (H',) "0" .. "H-1" (+ "o_proj bias")
    norm: np.ndarray                   # (L,H',P,G) ‖head h's part of the write for s‖
    proj: np.ndarray                   # (L,H',P,G) ⟨part, r⟩/‖r‖², r = residual after attention;
                                       #   Σ_h = the share of what the block wrote for s
    write_norm: np.ndarray             # (L,H',P)   ‖head h's whole write at p‖, all sources
    write_proj: np.ndarray             # (L,H',P)   its share ⟨write_h, r⟩/‖r‖²
    pattern: np.ndarray                # (L,H,P,P)  frozen attention, [layer, head, query, key]


@dataclass
class Decomposition:
    """Everything infoflow keeps from one prompt. (L,P,G) arrays are [layer, position, source].

    Sources are tokens, or groups of tokens, plus a final "bias" source for models with
    biases. Entries with source > position are zero.
    """
    prompt: str
    tokens: list[str]                  # (P,) display strings
    token_ids: np.ndarray              # (P,)
    sources: list[str]                 # (G,) labels of the source axis
    groups: np.ndarray                 # (P,) group index of each token (identity for "tokens")
    grouping: str                      # "tokens", "words" or "custom"
    attn_norm: np.ndarray              # (L,P,G) ‖part of the residual from s‖ after attention
    mlp_norm: np.ndarray               # (L,P,G) ... after the MLP
    attn_delta_norm: np.ndarray        # (L,P,G) ‖what the attention block wrote for s‖
    mlp_delta_norm: np.ndarray         # (L,P,G)
    attn_proj: np.ndarray              # (L,P,G) ⟨c_s, r⟩/‖r‖², sums to 1 over s
    mlp_proj: np.ndarray               # (L,P,G)
    embed_norm: np.ndarray             # (P,)
    pred_ids: np.ndarray               # (P,k) top next tokens
    pred_probs: np.ndarray             # (P,k)
    pred_logits: np.ndarray            # (P,k)
    logit_attr: np.ndarray             # (P,k,G) per-source logit, sums to pred_logits
    recon_error: np.ndarray            # (L,2) max_p ‖Σ_s c − r‖/‖r‖, [attn, mlp]
    logit_error: float                 # max |logits(Σ_s c) − logits|
    lens_ids: np.ndarray | None        # (L,2,P,k) logit lens at every cell
    lens_probs: np.ndarray | None      # (L,2,P,k)
    token_text: dict[int, str]         # display string of every id in pred_ids / lens_ids
    model: dict                        # id, fingerprint, layers, d_model, heads, dtype
    precision: str                     # the decomposition's float type
    version: str = __version__
    has_bias: bool = False
    timings: dict = field(default_factory=dict)
    # (P,G) demeaned logit attribution of each position's top prediction t: per source, against
    # u = W_U[t] − mean_v W_U[v], summing to the logit minus the mean logit (logits.mean_logit_parts). Not in
    # data files: None from infoflow.load.
    top_attr_demeaned: np.ndarray | None = None
    # (G,) each source's part of the mean logit over the vocabulary at the last position: the
    # logit_attr of a last-position prediction minus this is its demeaned attribution. In data
    # files (each variant's `logit_mean`); None from files written before it.
    logit_mean_last: np.ndarray | None = None
    # The logit lens of a few tokens at the last position, after every sublayer: the top-k
    # predictions there, then the declared target where it is not one of them. None without the lens.
    lens_track_ids: np.ndarray | None = None        # (m,) token ids (keys of token_text)
    lens_track_probs: np.ndarray | None = None      # (m, L, 2) probability, [token, layer, attn=0 / mlp=1]
    lens_track_ranks: np.ndarray | None = None      # (m, L, 2) 1 + tokens with a larger lens logit
    lens_target: int | None = None                  # row of the declared target in lens_track_ids
    # Heads, None (not computed) or, from a data file, a function that reads them: see `heads`.
    head_data: object = field(default=None, repr=False)
    graphs: list = field(default_factory=list, repr=False)   # paths.Graph, when asked for

    @property
    def heads(self) -> Heads | None:
        """Per-head data (issue 13). From a data file it is read on first access, from the
        companion in `data/heads/`; None where it was not computed."""
        if callable(self.head_data):
            self.head_data = self.head_data()
        return self.head_data

    @property
    def n_layers(self) -> int:
        return self.attn_norm.shape[0]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def worst_recon_error(self) -> float:
        return float(self.recon_error.max())

    # ------------------------------------------------------------- display (infoflow/notebook.py)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """A notebook shows the prompt page's viewer inline (infoflow.show for another view)."""
        from .notebook import show
        return show(self)._repr_mimebundle_(include, exclude)

    def _repr_html_(self) -> str:
        from .notebook import show
        return show(self).html

    def save_html(self, path, **view):
        """Write the viewer as one self-contained HTML file; view: infoflow.show's options
        (metric="proj", trace=" Mary", ...)."""
        from .notebook import save_html
        return save_html(self, path, **view)

    def top_prediction(self, position: int = -1) -> tuple[str, float]:
        i = int(self.pred_ids[position, 0])
        return self.token_text[i], float(self.pred_probs[position, 0])

    def top_sources(self, position: int = -1, n: int = 3) -> list[tuple[int, float]]:
        """The n sources that most favour the top prediction at `position` over the rest of the
        vocabulary (demeaned logit attribution): [(source index, logit), ...], largest first."""
        if self.top_attr_demeaned is not None:
            row = self.top_attr_demeaned[position]
        elif self.logit_mean_last is not None and position % self.n_tokens == self.n_tokens - 1:
            row = self.logit_attr[-1, 0] - self.logit_mean_last      # from a data file: the last position
        else:
            return []
        return [(int(s), float(row[s])) for s in np.argsort(-row, kind="stable")[:n]]

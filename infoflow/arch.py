"""Each supported decoder family's frozen-linear recipe, as data.

With every attention pattern, MLP gate and norm scale frozen, a decoder layer of any of
these families is linear in its input. What differs between families is only *where* the
frozen per-position norm scales sit and how the weights are laid out:

    attention block   x_mid = x + post1( W_o · (A ⊗ W_v · pre1(x)) )
    MLP block         x_out = x_mid + post2( W_down · (g ⊙ W_up · pre2(x_mid)) )

    pre(x)[p]  = n ⊙ x[p] / rms(x)[p]          n = w, or 1 + w (Gemma); identity if absent
    post(y)[p] = n ⊙ y[p] / rms(y)[p]          rms of the block's real output at p, frozen

A pre-norm scales what a block *reads*, a post-norm what it *writes*; both are one frozen
scalar per position times a fixed vector, so the split into sources stays exact. The engine
(engine.py) follows a `Recipe`; nothing else in it is family-specific.

What needs nothing because the patterns are frozen: Q/K norms (Qwen3, Gemma 3, OLMo-2),
sliding windows (Mistral, Gemma 3), rotary variants, attention-logit soft-capping and the
query scale. Final-logit soft-capping (Gemma 2) is *not* linear in the sources: refused.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    family: str                      # display name
    model_types: tuple[str, ...]     # config.model_type values it covers
    # Module names inside a decoder layer; None where the family has no such norm.
    attn_pre_norm: str | None        # normalizes what attention reads
    attn_post_norm: str | None       # normalizes what attention writes
    mlp_pre_norm: str | None
    mlp_post_norm: str | None
    norm_offset: float = 0.0         # norm weight n = norm_offset + w (Gemma: 1)
    embed_scale: str = "1"           # "1" or "sqrt(d)": token embedding times this (Gemma)
    activation: str = "silu"         # the gate's activation: "silu" or "gelu_tanh"
    qkv: str = "self_attn.v_proj"    # where W_v lives; a fused "qkv_proj" is split (Phi-3)
    up: str = "mlp.up_proj"          # where W_up lives; a fused "gate_up_proj" is split (Phi-3)
    gate_act: str = "mlp.act_fn"     # the activation module whose output is the frozen gate
    final_norm: str = "model.norm"

    @property
    def fused_qkv(self) -> bool:
        return self.qkv.endswith("qkv_proj")

    @property
    def fused_gate_up(self) -> bool:
        return self.up.endswith("gate_up_proj")

    def norms(self) -> list[str]:
        return [n for n in (self.attn_pre_norm, self.attn_post_norm, self.mlp_pre_norm,
                            self.mlp_post_norm) if n]


_PRE = dict(attn_pre_norm="input_layernorm", attn_post_norm=None,
            mlp_pre_norm="post_attention_layernorm", mlp_post_norm=None)

RECIPES = [
    Recipe("Llama", ("llama",), **_PRE),
    Recipe("Mistral", ("mistral",), **_PRE),
    Recipe("Qwen2", ("qwen2",), **_PRE),
    Recipe("Qwen3", ("qwen3",), **_PRE),
    Recipe("Phi-3", ("phi3",), **_PRE, qkv="self_attn.qkv_proj", up="mlp.gate_up_proj",
           gate_act="mlp.activation_fn"),
    Recipe("Gemma 3", ("gemma3_text", "gemma3"),
           attn_pre_norm="input_layernorm", attn_post_norm="post_attention_layernorm",
           mlp_pre_norm="pre_feedforward_layernorm", mlp_post_norm="post_feedforward_layernorm",
           norm_offset=1.0, embed_scale="sqrt(d)", activation="gelu_tanh"),
    Recipe("OLMo-2", ("olmo2",),
           attn_pre_norm=None, attn_post_norm="post_attention_layernorm",
           mlp_pre_norm=None, mlp_post_norm="post_feedforward_layernorm"),
]

SUPPORTED = ", ".join(r.family for r in RECIPES)

# Families we recognise but cannot decompose exactly, and why.
REFUSED = {
    "gemma2": "Gemma 2 soft-caps its final logits (tanh), which is not linear in the sources, "
              "so per-source logit attributions would not sum to the logits",
    "gemma": "Gemma 1 is not supported (no recipe written or tested for it)",
}

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh"}


class ArchitectureError(Exception):
    """The model's family has no recipe or cannot be decomposed; the message says which."""


def recipe_for(config) -> Recipe:
    """The recipe for a Hugging Face config, or ArchitectureError in one line."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise ArchitectureError(f"model_type={model_type!r}: {REFUSED[model_type]}. "
                                f"Supported: {SUPPORTED}.")
    for r in RECIPES:
        if model_type in r.model_types:
            if getattr(config, "final_logit_softcapping", None) is not None:
                raise ArchitectureError(
                    f"model_type={model_type!r} with final_logit_softcapping="
                    f"{config.final_logit_softcapping}: capped logits are not linear in the sources.")
            return r
    raise ArchitectureError(f"model_type={model_type!r} has no infoflow recipe. "
                            f"Supported: {SUPPORTED}.")


def activation(config, recipe: Recipe) -> str:
    """The gate activation the config names, in the recipe's vocabulary."""
    name = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    return _ACTIVATIONS.get(str(name), str(name))


def embed_scale(config, recipe: Recipe) -> float:
    return math.sqrt(config.hidden_size) if recipe.embed_scale == "sqrt(d)" else 1.0


def head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def describe(hf, recipe: Recipe) -> dict:
    """What a second engine needs to follow this model: the recipe and the model's own
    choices (tied unembedding, biases, activation, embedding scale). JSON-able."""
    c = hf.config
    biased = sorted({name.rsplit(".", 2)[-2] for name, _ in hf.named_parameters()
                     if name.endswith(".bias")})
    d = {k: v for k, v in asdict(recipe).items() if k != "model_types"}
    d.update(activation=activation(c, recipe), embed_scale=embed_scale(c, recipe),
             tied_unembedding=bool(getattr(c, "tie_word_embeddings", False)), biases=biased,
             head_dim=head_dim(c))
    return d


# ----------------------------------------------------------------------------- module access


def get(module, dotted: str | None):
    """module.a.b.c by name, or None when any part is missing."""
    if dotted is None:
        return None
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def norm_eps(norm) -> float:
    """An RMSNorm's epsilon: `variance_epsilon` (Llama and most) or `eps` (Gemma)."""
    eps = getattr(norm, "variance_epsilon", None)
    return float(norm.eps if eps is None else eps)


def norm_weight(norm, recipe: Recipe):
    """The vector an RMSNorm multiplies by: w, or 1 + w."""
    return norm.weight.detach() + recipe.norm_offset if recipe.norm_offset else norm.weight.detach()


def value_proj(layer, config, recipe: Recipe):
    """(W_v (d_kv, d), b_v or None): rows of a fused qkv_proj after the queries and keys."""
    lin = get(layer, recipe.qkv)
    W, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if not recipe.fused_qkv:
        return W, b
    hd, H = head_dim(config), config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or H
    v0 = (H + n_kv) * hd                        # [q (H·hd) | k (kv·hd) | v (kv·hd)]
    return W[v0:], None if b is None else b[v0:]


def up_proj(layer, config, recipe: Recipe):
    """(W_up (d_ff, d), b_up or None): the second half of a fused gate_up_proj."""
    lin = get(layer, recipe.up)
    W, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if not recipe.fused_gate_up:
        return W, b
    d_ff = W.shape[0] // 2                      # [gate (d_ff) | up (d_ff)], as chunk(2)
    return W[d_ff:], None if b is None else b[d_ff:]


def missing_modules(hf, recipe: Recipe) -> list[str]:
    """Modules the recipe reads that this model lacks (empty when it fits)."""
    need = ["model.embed_tokens", "model.layers", recipe.final_norm, "lm_head"]
    missing = [n for n in need if get(hf, n) is None]
    layers = get(hf, "model.layers")
    if layers is not None and len(layers):
        per_layer = recipe.norms() + ["self_attn", recipe.qkv, "self_attn.o_proj", "mlp",
                                      recipe.up, "mlp.down_proj", recipe.gate_act]
        missing += [f"layers[0].{n}" for n in per_layer if get(layers[0], n) is None]
        for n in recipe.norms():
            mod = get(layers[0], n)
            if mod is not None and (getattr(mod, "bias", None) is not None or not hasattr(mod, "weight")):
                missing.append(f"layers[0].{n} is {type(mod).__name__}, not an RMSNorm")
    return missing

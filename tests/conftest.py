import json

import pytest
import torch

from infoflow.decompose import get_model
from infoflow.model import LoadedModel, model_info


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


def tiny_model(kind: str = "gqa", layers: int = 2, seed: int = 0) -> LoadedModel:
    """A random Llama-family model small enough for the naive reference."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                  max_position_embeddings=64, initializer_range=0.3, rms_norm_eps=1e-6)
    if kind == "gqa":
        cls, cfg = LlamaForCausalLM, LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common)
    elif kind == "mha":
        cls, cfg = LlamaForCausalLM, LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **common)
    elif kind == "llama-bias":
        cls, cfg = LlamaForCausalLM, LlamaConfig(num_attention_heads=4, num_key_value_heads=2,
                                                 attention_bias=True, mlp_bias=True, **common)
    elif kind == "qwen2":
        cls, cfg = Qwen2ForCausalLM, Qwen2Config(num_attention_heads=4, num_key_value_heads=2,
                                                 tie_word_embeddings=False, **common)
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    hf = cls(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)     # random init leaves biases at zero; make them matter
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return LoadedModel(hf=hf, tokenizer=CharTokenizer(cfg.vocab_size),
                       info=model_info(hf, f"tiny-{kind}", f"random-seed-{seed}"))


SLOW_FIXTURES = {"default_model", "gallery", "gallery_site", "test_cache"}


def pytest_collection_modifyitems(items):
    """Tests that load the real model or build a real gallery are `slow` (deselect: -m "not slow")."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M-Instruct, converted once and shared by the whole session."""
    return get_model(None)


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


@pytest.fixture(scope="session")
def test_cache(tmp_path_factory, default_model):
    """A fresh result cache that shares the already converted default model."""
    from infoflow.model import cache_dir, converted_default_model

    converted_default_model()
    root = tmp_path_factory.mktemp("cache")
    (root / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    return root


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

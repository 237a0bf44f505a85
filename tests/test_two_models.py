"""Issue 14: a gallery of two models, on tiny random models (no Gemma needed).

Model A is a tiny Llama with the default model's tokenizer; model B a tiny Gemma 3 with a small
BPE tokenizer trained here, which adds <bos> and cuts words differently from A's: the same two
differences (depth, tokenizer) the real SmolLM2 / Gemma 3 gallery has.
"""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from infoflow.build import build, merge_shards
from infoflow.cli import main
from infoflow.config import ConfigError, SiteConfig
from infoflow.gallery_models import gallery_models, model_slug, tokenization_differences
from infoflow.model import DEFAULT_MODEL, GEMMA_MODEL
from infoflow.prompts import PromptError
from infoflow.publish import PublishError, site_files

PROMPTS = '''[[prompt]]
id = "capital"
title = "Factual recall"
text = "The capital of France is"

[[prompt]]
id = "dursley"
title = "Induction"
text = "Mr. Dursley was director of a firm called Grunnings. Mr. Dursley"
'''


def bpe_tokenizer():
    """A byte-level BPE tokenizer of 300 pieces that adds <bos>: it cuts rare words into many."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # <pad> first: Gemma's config zeroes the embedding of pad_token_id = 0
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["The capital of France is Paris. Mr. Dursley was director of a firm."] * 3, trainer)
    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two local model folders: (tiny Llama, 3 layers, SmolLM2's tokenizer; tiny Gemma 3, 2 layers, BPE)."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from infoflow.model import converted_default_model

    root = tmp_path_factory.mktemp("two-models")
    torch.manual_seed(0)
    smol = AutoTokenizer.from_pretrained(converted_default_model())
    a = root / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(smol), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
                     ).save_pretrained(a)
    smol.save_pretrained(a)
    bpe = bpe_tokenizer()
    b = root / "tiny-gemma"
    Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
                                       query_pre_attn_scalar=16, max_position_embeddings=128,
                                       layer_types=["sliding_attention", "full_attention"])).save_pretrained(b)
    bpe.save_pretrained(b)
    return str(a), str(b)


@pytest.fixture(scope="module")
def two_model_site(two_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-model-site")
    (root / "prompts.toml").write_text(PROMPTS, encoding="utf-8")
    cfg = SiteConfig(prompts=root / "prompts.toml", out=root / "site", cache=str(root / "cache"),
                     models=two_models, live=False)
    summary = build(cfg, progress=False, log=lambda *a: None)
    return {"cfg": cfg, "summary": summary, "site": root / "site", "root": root}


def manifest(site: Path) -> dict:
    return json.loads((site / "data" / "manifest.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- build


def test_every_prompt_is_computed_on_every_model(two_model_site, two_models):
    s, site = two_model_site["summary"], two_model_site["site"]
    b = model_slug(two_models[1])
    assert sorted(s.computed) == sorted(["capital", "dursley", f"capital ({b})", f"dursley ({b})"])
    m = manifest(site)
    assert [x["key"] for x in m["site"]["models"]] == [model_slug(two_models[0]), b]
    assert [x["layers"] for x in m["site"]["models"]] == [3, 2]
    for e in m["prompts"]:
        assert [v["key"] for v in e["models"]] == [model_slug(two_models[0]), b]
        primary, other = e["models"]
        # the primary model keeps the one-model URLs; the other's files live under data/<slug>/
        assert e["data"] == primary["data"] and primary["data"].startswith(f"data/{e['id']}.")
        assert other["data"].startswith(f"data/{b}/{e['id']}.") and other["thumb"].startswith(f"thumbs/{b}/")
        assert (site / other["data"]).is_file() and (site / other["heads"]).is_file()
        assert e["compare"] == f"c/{e['id']}.html" and (site / e["compare"]).is_file()
        assert primary["n_tokens"] != other["n_tokens"]          # different tokenizers
    import infoflow
    d = infoflow.load(site / m["prompts"][0]["models"][1]["data"])
    assert d.tokens[0] == "<bos>" and d.model["layers"] == 2


def test_rebuild_reuses_each_models_cache_entries(two_model_site):
    cfg = two_model_site["cfg"]
    again = build(cfg, progress=False, log=lambda *a: None)
    assert again.computed == [] and len(again.reused) == 4 and not again.model_loaded
    assert len(list((Path(cfg.cache) / "results").glob("*.msgpack"))) == 4


def test_primary_files_are_those_of_a_one_model_gallery(two_model_site, two_models, tmp_path):
    cfg = two_model_site["cfg"]
    one = replace(cfg, out=tmp_path / "one", models=(two_models[0],))
    build(one, progress=False, log=lambda *a: None)
    names = lambda site: sorted(p.relative_to(site).as_posix() for p in (site / "data").glob("*.msgpack"))  # noqa
    assert names(tmp_path / "one") == names(two_model_site["site"])
    assert not (tmp_path / "one" / "c").exists()
    assert [v["key"] for v in manifest(tmp_path / "one")["prompts"][0]["models"]] == [model_slug(two_models[0])]


def test_publish_lists_every_models_files_and_refuses_strays(two_model_site, two_models, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(two_model_site["site"], site)
    files = site_files(site)
    b = model_slug(two_models[1])
    assert any(f.startswith(f"data/{b}/heads/") for f in files) and "c/capital.html" in files
    assert any(f.startswith(f"thumbs/{b}/") for f in files)
    (site / "data" / b / "stray.msgpack").write_bytes(b"x")
    with pytest.raises(PublishError, match=f"data/{b}/stray.msgpack"):
        site_files(site)


def test_shards_of_two_models_merge_into_the_same_site(two_model_site, tmp_path):
    cfg = two_model_site["cfg"]
    shards = []
    for i in range(2):
        cache = tmp_path / f"shard{i}"
        cache.mkdir()
        shutil.copytree(Path(cfg.cache) / "results", cache / "results")
        build(replace(cfg, cache=str(cache)), shard=(i, 2), progress=False, log=lambda *a: None)
        shards.append(cache)
    merged = replace(cfg, out=tmp_path / "merged", cache=str(tmp_path / "merged-cache"))
    summary = merge_shards(shards, merged, progress=False, log=lambda *a: None)
    assert len(summary.reused) == 4 and summary.computed == []
    want = {p.relative_to(two_model_site["site"]).as_posix() for p in two_model_site["site"].rglob("*") if p.is_file()}
    got = {p.relative_to(tmp_path / "merged").as_posix() for p in (tmp_path / "merged").rglob("*") if p.is_file()}
    assert got == want


def test_merge_names_the_missing_model(two_model_site, tmp_path):
    cfg = two_model_site["cfg"]
    from infoflow.build import BuildError
    with pytest.raises(BuildError, match=r"capital \(tiny-gemma\)"):
        merge_shards([], replace(cfg, out=tmp_path / "m", cache=str(tmp_path / "empty")), progress=False,
                     log=lambda *a: None)
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- the pages


def test_prompt_page_switches_model_and_links_compare(two_model_site, two_models):
    from html.parser import HTMLParser

    site, b = two_model_site["site"], model_slug(two_models[1])
    html = (site / "p" / "dursley.html").read_text(encoding="utf-8")

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.choices, self.compare = [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "model-choice" in (a.get("class") or ""):
                self.choices.append(a)
            if a.get("id") == "compare-link":
                self.compare = a["href"]

    links = Links()
    links.feed(html)
    assert [c["href"] for c in links.choices] == ["dursley.html", f"dursley.html?model={b}"]
    e = next(x for x in manifest(site)["prompts"] if x["id"] == "dursley")
    assert links.choices[1]["data-src"] == "../" + e["models"][1]["data"]
    assert links.compare == "../c/dursley.html"
    # where the two tokenizers cut the prompt differently, the page says so
    assert "token-note" in html and "Grunnings" in html and "&lt;bos&gt;" in html
    index = (site / "index.html").read_text(encoding="utf-8")
    assert f"dursley.html?model={b}" in index and "c/dursley.html" in index


def test_tokenization_differences():
    text = "Mr. Dursley was called Grunnings"
    a = ["Mr", ".", " D", "urs", "ley", " was", " called", " Gr", "unn", "ings"]
    b = ["<bos>", "Mr", ".", " Dursley", " was", " called", " Grun", "nings"]
    d = tokenization_differences(a, b, text)
    assert d["extra_a"] == [] and d["extra_b"] == ["<bos>"] and (d["n_a"], d["n_b"]) == (10, 8)
    assert d["words"] == [{"word": "Dursley", "a": ["D", "urs", "ley"], "b": ["Dursley"]},
                          {"word": "Grunnings", "a": ["Gr", "unn", "ings"], "b": ["Grun", "nings"]}]
    same = tokenization_differences(["The", " cat"], ["<bos>", "The", " cat"], "The cat")
    assert same["same"] and same["extra_b"] == ["<bos>"]
    assert tokenization_differences(["<0xC3>", "<0xA9>"], ["é"], "é") is None    # byte pieces


# ----------------------------------------------------------------------------- which models


def test_default_models_are_the_installed_offline_ones(monkeypatch, tmp_path):
    from infoflow import gallery_models as G

    prompts = tmp_path / "p.toml"
    prompts.write_text(PROMPTS, encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "site")
    lines = []
    monkeypatch.setenv("INFOFLOW_MODELS", f"{GEMMA_MODEL}, {DEFAULT_MODEL}")
    assert gallery_models(cfg, log=lines.append) == [GEMMA_MODEL, DEFAULT_MODEL]
    monkeypatch.delenv("INFOFLOW_MODELS")
    monkeypatch.setattr(G, "offline_installed", lambda name: False)
    assert gallery_models(cfg, log=lines.append) == [DEFAULT_MODEL]
    assert len(lines) == 1 and "bash setup.sh` (without --no-gemma)" in lines[0]
    monkeypatch.setattr(G, "offline_installed", lambda name: True)
    lines.clear()
    assert gallery_models(cfg, log=lines.append) == [DEFAULT_MODEL, GEMMA_MODEL] and lines == []
    assert gallery_models(replace(cfg, model="some/folder"), log=lines.append) == ["some/folder"]
    assert gallery_models(replace(cfg, models=(GEMMA_MODEL,)), log=lines.append) == [GEMMA_MODEL]


def test_prompts_file_names_the_models(tmp_path):
    prompts = tmp_path / "p.toml"
    prompts.write_text(f'models = ["{GEMMA_MODEL}", "{DEFAULT_MODEL}"]\n' + PROMPTS, encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "site")
    assert gallery_models(cfg) == [GEMMA_MODEL, DEFAULT_MODEL]
    assert gallery_models(replace(cfg, models=(DEFAULT_MODEL,))) == [DEFAULT_MODEL]   # the option wins
    prompts.write_text('models = "gemma3-270m"\n' + PROMPTS, encoding="utf-8")
    with pytest.raises(PromptError, match="`models` must be a list"):
        build(cfg, progress=False)
    prompts.write_text(f'models = ["{DEFAULT_MODEL}", "{DEFAULT_MODEL}"]\n' + PROMPTS, encoding="utf-8")
    with pytest.raises(ConfigError, match="name each model once"):
        gallery_models(cfg)


def test_models_option_is_validated_in_one_place(tmp_path):
    prompts = tmp_path / "p.toml"
    prompts.write_text(PROMPTS, encoding="utf-8")
    common = ["--prompts", prompts, "--out", tmp_path / "site"]
    r = CliRunner().invoke(main, ["build", *map(str, common), "--model", "x", "--models", "a,b"])
    assert r.exit_code != 0 and "pass one of them" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build", *map(str, common), "--models", f"{DEFAULT_MODEL},,"])
    assert r.exit_code != 0 and "a model name is empty" in r.output
    with pytest.raises(ConfigError, match="same model"):
        SiteConfig(prompts=prompts, out=tmp_path / "s", models=("a/b", "c/b")).check()
    assert not (tmp_path / "site").exists()


def test_serve_refuses_to_rebuild_with_other_models(two_model_site, two_models, tmp_path):
    cfg = two_model_site["cfg"]
    site = tmp_path / "site"
    build(replace(cfg, out=site), progress=False, log=lambda *a: None)
    r = CliRunner().invoke(main, ["publish", "--prompts", str(cfg.prompts), "--out", str(site), "--cache-dir",
                                  cfg.cache, "--no-live", "--models", two_models[0], "--dry-run"])
    assert "would rebuild first: it was built with other options: models=" in r.output, r.output
    r = CliRunner().invoke(main, ["serve", "--prompts", str(cfg.prompts), "--out", str(site), "--cache-dir",
                                  cfg.cache, "--no-live", "--models", two_models[0], "--port", "1"])
    assert r.exit_code == 1 and "--models " + ",".join(two_models) in r.output, r.output


def test_pages_credit_each_model_and_link_its_terms(two_model_site, tmp_path):
    """A model with a credit line and terms (as Gemma 3 has: infoflow/model.py OFFLINE_MODELS)
    is credited, with links to the site's copy of its terms and to their address, in the footer
    of every page: the index, each prompt page (marked for the model on screen) and compare."""
    from infoflow.site import render_site

    m = manifest(two_model_site["site"])
    site, entries = m["site"], m["prompts"]
    credit = "Gemma 3 270M by Google, provided under and subject to the Gemma Terms of Use"
    site["models"][1].update(credit=credit, terms="licenses/gemma3-270m-terms.txt",
                             terms_url="https://ai.google.dev/gemma/terms")
    render_site(tmp_path, entries, site)
    key = site["models"][1]["key"]
    for page, root in [("index.html", ""), ("p/capital.html", "../"), ("c/capital.html", "../")]:
        html = (tmp_path / page).read_text(encoding="utf-8")
        block = html[html.index(f'data-model="{key}"', html.index("site-footer")):]
        block = block[:block.index("</p>")]
        assert credit in block, page
        assert f'href="{root}licenses/gemma3-270m-terms.txt"' in block, page
        assert 'href="https://ai.google.dev/gemma/terms"' in block, page
    # the other model has no credit line of its own
    html = (tmp_path / "p/capital.html").read_text(encoding="utf-8")
    assert html.count("Gemma Terms of Use") == 1


def test_chat_prompt_is_skipped_on_a_model_without_a_chat_template(two_models, tmp_path):
    """Gemma 3 270M's GGUF carries no chat template: a chat prompt is shown on the other model."""
    from infoflow.gallery_models import has_chat_template

    assert has_chat_template(two_models[0]) is True and has_chat_template(two_models[1]) is False
    prompts = tmp_path / "p.toml"
    prompts.write_text(PROMPTS + '\n[[prompt]]\nid = "chat"\ntitle = "Chat"\ntext = "Hi there"\nchat = true\n',
                       encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "site", cache=str(tmp_path / "cache"), models=two_models,
                     live=False)
    summary = build(cfg, progress=False, log=lambda *a: None)
    b = model_slug(two_models[1])
    assert [pid for pid, _ in summary.skipped] == [f"chat ({b})"] and not summary.failed
    assert "no chat template" in summary.skipped[0][1] and "1 skipped" in summary.line()
    entry = next(e for e in manifest(tmp_path / "site")["prompts"] if e["id"] == "chat")
    assert [v["key"] for v in entry["models"]] == [model_slug(two_models[0])] and "compare" not in entry
    assert not (tmp_path / "site" / "c" / "chat.html").exists()
    assert 'id="model-switch"' not in (tmp_path / "site" / "p" / "chat.html").read_text(encoding="utf-8")
    footer = (tmp_path / "site" / "p" / "chat.html").read_text(encoding="utf-8").split("site-footer")[1]
    assert model_slug(two_models[0]) in footer and b not in footer     # credits only the model it shows

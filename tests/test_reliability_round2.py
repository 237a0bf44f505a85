"""Issue 26, the second reliability round: never run a model folder's code, never serve a stale
result, never delete what we didn't write, never trust a data file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, stdin: str = "", cwd=None, timeout=120):
    """`infoflow ARGS` in its own process, so nothing of this test process leaks into it."""
    return subprocess.run([sys.executable, "-m", "infoflow.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})


def one_line_error(proc) -> str:
    """The error of a CLI run that failed the way a user mistake must: exit 1, one line, no
    traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- 1. a model folder's code


EVIL = """import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evilmodel"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""

CODE_FOLDERS = {
    # the probe: an unknown model_type whose auto_map points at evil.py
    "unknown-type-auto-map": ({"model_type": "evilmodel", "architectures": ["EvilModel"],
                               "auto_map": {"AutoConfig": "evil.EvilConfig",
                                            "AutoModelForCausalLM": "evil.EvilModel"}}, None),
    # a family we support, but its auto_map names the folder's code
    "llama-auto-map": ({"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}}, None),
    # the tokenizer's config names the folder's code
    "tokenizer-auto-map": ({"model_type": "llama"}, {"auto_map": {"AutoTokenizer": ["evil.EvilTok", None]}}),
    # no auto_map, but no family we have a recipe for
    "unknown-type": ({"model_type": "evilmodel"}, None),
    "no-model-type": ({"architectures": ["LlamaForCausalLM"]}, None),
}


def code_folder(tmp_path: Path, case: str) -> tuple[Path, Path]:
    config, tok_config = CODE_FOLDERS[case]
    folder, marker = tmp_path / case, tmp_path / f"{case}.ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if tok_config:
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return folder, marker


def add_tokenizer(folder: Path) -> None:
    """A working tokenizer, so that a load gets past it to the model's config (the probe's folder
    had one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "Hi": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    from safetensors.numpy import save_file
    import numpy as np
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))


def test_model_folder_code_never_runs_even_when_stdin_says_yes(tmp_path):
    """The probe (G4): `echo y | infoflow decompose Hi --model FOLDER` ran evil.py."""
    folder, marker = code_folder(tmp_path, "unknown-type-auto-map")
    add_tokenizer(folder)
    proc = run_cli("decompose", "Hi", "--model", folder, stdin="y\n" * 5)
    assert not marker.exists(), proc.stdout + proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr
    err = one_line_error(proc)
    assert "auto_map" in err and "never runs" in err and str(folder) in err, err


def test_unsupported_folders_refused_before_transformers_is_imported(tmp_path):
    """Each folder is refused by reading its JSON: transformers is never imported (one process
    for all cases, ~5 s each otherwise)."""
    folders = {case: code_folder(tmp_path, case) for case in CODE_FOLDERS}
    script = ("import sys\nfrom infoflow.model import ModelError, load_model\n"
              "for case, folder in sys.argv[1:] and zip(sys.argv[1::2], sys.argv[2::2]):\n"
              "    try:\n        load_model(folder)\n        print(case, 'LOADED')\n"
              "    except ModelError as e:\n        print(case, 'refused:', e)\n"
              "print('transformers imported:', 'transformers' in sys.modules)\n")
    args = [str(a) for case, (folder, _) in folders.items() for a in (case, folder)]
    proc = subprocess.run([sys.executable, "-c", script, *args], input="y\n" * 20, capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for case, (folder, marker) in folders.items():
        said = lines.get(case, "")
        assert said.startswith("refused:") and str(folder) in said and "Supported: Llama" in said, (case, said)
        assert ("auto_map" in said) == ("auto-map" in case), (case, said)
        assert not marker.exists(), case
    assert lines["transformers"] == "imported: False", proc.stdout


def test_every_transformers_load_passes_trust_remote_code_false():
    """Every from_pretrained call in the package says trust_remote_code=False (a default of None
    makes transformers ask on stdin)."""
    import re
    calls = []
    for path in (ROOT / "infoflow").glob("*.py"):
        if path.name == "live.py":      # issue 26 items 7-10 are another change's
            continue
        text = path.read_text()
        for m in re.finditer(r"\.from_pretrained\(|LanguageModel\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((path.name, text[m.start():i]))
    assert len(calls) >= 5, calls
    assert all("trust_remote_code=False" in call for _, call in calls), \
        [c for c in calls if "trust_remote_code=False" not in c[1]]


# ----------------------------------------------------------------------------- 2. stale results


WORDS = ["<unk>", "<s>", "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]


def tiny_folder(where: Path, seed: int = 0) -> Path:
    """A small random Llama folder with a word-level tokenizer: loads in a second, needs nothing
    converted."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = where / "tiny-llama"
    folder.mkdir(parents=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "unk_token": "<unk>"}))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.5)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def poison_in_place(weights: Path) -> None:
    """The probe's edit: overwrite bytes of the weights in place, then put the mtime back
    (`touch -r`). Size and mtime are as before."""
    st = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(bytes(st.st_size - st.st_size // 2))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_mtime_ns == st.st_mtime_ns and weights.stat().st_size == st.st_size


@pytest.fixture
def no_racy_wait(monkeypatch):
    """Let the fingerprint memo remember files written a moment ago (it waits 2 s of file-clock
    time otherwise), so that the tests exercise the memo itself."""
    import time
    from infoflow import model
    monkeypatch.setattr(model, "_RACY_NS", 0, raising=False)
    yield lambda: time.sleep(0.05)        # past one tick of the file clock


def test_fingerprint_sees_an_in_place_write_with_the_mtime_put_back(tmp_path, no_racy_wait):
    import hashlib
    from infoflow.model import _FINGERPRINT_FILE, fingerprint
    folder = tiny_folder(tmp_path)
    no_racy_wait()
    clean = fingerprint(str(folder))
    assert (folder / _FINGERPRINT_FILE).exists() and fingerprint(str(folder)) == clean   # remembered
    no_racy_wait()
    poison_in_place(folder / "model.safetensors")
    now = fingerprint(str(folder))
    assert now != clean
    assert now == "sha256:" + hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


ONE = '[[prompt]]\nid = "cat"\ntitle = "Cat"\ntext = "the cat sat on the"\n'


def cat_probs(cfg) -> "np.ndarray":
    """The next-token probabilities of the cached result for prompt "cat" under cfg's model."""
    from infoflow.build import _entry_path, read_cached
    from infoflow.datafile import decode_array
    from infoflow.model import fingerprint
    from infoflow.prompts import load_prompts
    (p,) = load_prompts(cfg.prompts)
    doc = read_cached(_entry_path(cfg, p, fingerprint(cfg.model, cfg.cache)))
    assert doc is not None
    return decode_array(doc["predictions"]["probs"])


def test_a_restored_model_never_gets_a_result_computed_while_it_was_changed(tmp_path, no_racy_wait):
    """The probe (C6): weights zeroed in place with the mtime put back kept the fingerprint, so the
    results computed meanwhile were cached under the clean weights' key, and reused once the
    weights were restored (`cp -p`)."""
    import shutil
    import numpy as np
    from infoflow.build import build
    from infoflow.config import SiteConfig
    folder = tiny_folder(tmp_path / "m")
    pristine = tiny_folder(tmp_path / "pristine")              # the same seed: the same weights
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(ONE)
    ref_cfg = SiteConfig(prompts=prompts, out=tmp_path / "unused", model=str(pristine), cache=str(tmp_path / "ref"))
    build(ref_cfg, shard=(0, 1), progress=False)
    reference = cat_probs(ref_cfg)

    cfg = SiteConfig(prompts=prompts, out=tmp_path / "unused", model=str(folder), cache=str(tmp_path / "cache"))
    no_racy_wait()
    from infoflow.model import fingerprint
    clean = fingerprint(str(folder))
    backup = tmp_path / "backup.safetensors"
    shutil.copy2(folder / "model.safetensors", backup)
    no_racy_wait()
    poison_in_place(folder / "model.safetensors")
    assert build(cfg, shard=(0, 1), progress=False).computed == ["cat"]      # with the zeroed weights
    assert not np.allclose(cat_probs(cfg), reference)
    no_racy_wait()
    shutil.copy2(backup, folder / "model.safetensors")                    # cp -p: the mtime comes back too
    assert fingerprint(str(folder)) == clean
    build(cfg, shard=(0, 1), progress=False)
    np.testing.assert_allclose(cat_probs(cfg), reference, rtol=1e-5)


def test_a_cached_result_of_other_weights_is_recomputed(tmp_path, no_racy_wait):
    """An entry under the right key whose document says it was computed with other weights (what
    the old memo let through) is not reused."""
    import msgpack
    from infoflow.build import _entry_path, build, read_cached
    from infoflow.config import SiteConfig
    from infoflow.datafile import pack_entry
    from infoflow.model import fingerprint
    from infoflow.prompts import load_prompts
    folder = tiny_folder(tmp_path)
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(ONE)
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "unused", model=str(folder), cache=str(tmp_path / "cache"))
    assert build(cfg, shard=(0, 1), progress=False).computed == ["cat"]
    path = _entry_path(cfg, load_prompts(prompts)[0], fingerprint(str(folder)))
    doc = read_cached(path)
    doc["model"]["fingerprint"] = "sha256:0123456789abcdef"
    path.write_bytes(pack_entry(path.stem, msgpack.packb(doc, use_bin_type=True)))
    with pytest.warns(UserWarning, match="computed with the weights sha256:0123456789abcdef"):
        summary = build(cfg, shard=(0, 1), progress=False)
    assert summary.computed == ["cat"] and summary.reused == []


# ----------------------------------------------------------------------------- 3. folders beside the site


def tiny_site_config(tmp_path: Path, out: Path):
    """A build of one prompt on the tiny model, no live page: a site in a few seconds."""
    from infoflow.config import SiteConfig
    folder = tmp_path / "tiny-llama" if (tmp_path / "tiny-llama").exists() else tiny_folder(tmp_path)
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(ONE)
    return SiteConfig(prompts=prompts, out=out, model=str(folder), cache=str(tmp_path / "cache"), live=False)


def test_build_removes_only_the_leftovers_it_made(tmp_path):
    """The probe (A3): `build --out site1` deleted a user's `.site1.older-backup` (and anything
    else named `.site1.old*` or `.site1.staging-*`) without a word."""
    import warnings
    from infoflow import sitedir
    from infoflow.build import build
    out = tmp_path / "site1"
    cfg = tiny_site_config(tmp_path, out)
    build(cfg, progress=False)
    users = [tmp_path / n for n in (".site1.older-backup", ".site1.old-12345678", ".site1.staging-mine")]
    for folder in users:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    ours = sitedir.new_staging(out)                 # a build killed while it wrote its staging folder
    (ours / "index.html").write_text("half")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(cfg, progress=False)
    said = "\n".join(str(w.message) for w in caught)
    assert not ours.exists()
    for folder in users:
        assert (folder / "notes.txt").read_text() == "mine"
        assert f"leaving {folder} alone" in said, said
    assert sorted(p.name for p in tmp_path.glob(".site1.*") if p.is_dir()) == sorted(p.name for p in users)


# ----------------------------------------------------------------------------- 4, 5. publishing


def git(*args, cwd):
    return subprocess.run(["git", *map(str, args)], cwd=cwd, check=True, capture_output=True, text=True).stdout


def pages_repo(tmp_path: Path) -> tuple[Path, Path]:
    """(a bare remote whose gh-pages branch someone else made, with CNAME, NOTES.md and
    otherproj/, and a clone to publish from)."""
    bare, other, work = tmp_path / "remote.git", tmp_path / "other", tmp_path / "work"
    git("init", "--bare", "-q", bare, cwd=tmp_path)
    git("init", "-q", "-b", "gh-pages", other, cwd=tmp_path)
    (other / "CNAME").write_text("pages.example.org\n")
    (other / "NOTES.md").write_text("notes")
    (other / "otherproj").mkdir()
    (other / "otherproj" / "index.html").write_text("another project")
    git("add", ".", cwd=other)
    git("-c", "user.name=someone", "-c", "user.email=s@example.org", "commit", "-qm", "my pages", cwd=other)
    git("push", "-q", bare, "gh-pages", cwd=other)
    git("init", "-q", work, cwd=tmp_path)
    git("remote", "add", "origin", bare, cwd=work)
    return bare, work


def test_publish_keeps_the_branchs_own_files_unless_forced(tmp_path):
    """The probe (B5): a gh-pages branch holding CNAME, NOTES.md and otherproj/ lost all three on
    publish, with no warning even in --dry-run."""
    from infoflow.build import build
    from infoflow.publish import PublishError, publish
    bare, work = pages_repo(tmp_path)
    site = tmp_path / "site"
    cfg = tiny_site_config(tmp_path, site)
    build(cfg, progress=False)
    refs = git("for-each-ref", cwd=work)
    tip = git("rev-parse", "gh-pages", cwd=bare)

    dry = publish(site, repo=work, dry_run=True)
    assert dry.removed == ["NOTES.md", "otherproj/index.html"]
    assert "NOTES.md, otherproj/index.html" in dry.message and "--force" in dry.message
    assert "with CNAME pages.example.org" in dry.message
    assert git("for-each-ref", cwd=work) == refs                      # a dry run moves no ref

    with pytest.raises(PublishError, match=r"would remove NOTES\.md, otherproj/index\.html .*--force"):
        publish(site, repo=work)
    assert git("rev-parse", "gh-pages", cwd=bare) == tip

    forced = publish(site, repo=work, force=True)
    assert forced.pushed and forced.removed == ["NOTES.md", "otherproj/index.html"]
    assert "removes 2 files" in forced.message
    assert git("show", "gh-pages:CNAME", cwd=bare).strip() == "pages.example.org"   # kept

    # The files our own publish wrote are replaced freely: a new title renames the data file.
    cfg.prompts.write_text(ONE.replace('title = "Cat"', 'title = "A cat"'))
    build(cfg, progress=False)
    again = publish(site, repo=work)
    assert again.pushed and again.removed and all(p.startswith("data/") for p in again.removed)
    assert git("show", "gh-pages:CNAME", cwd=bare).strip() == "pages.example.org"
    assert publish(site, repo=work, cname="new.example.org").pushed
    assert git("show", "gh-pages:CNAME", cwd=bare).strip() == "new.example.org"


def test_publish_never_rebuilds_over_a_users_files(tmp_path):
    """The probe (B2): stray files in the site (.env, data/id_rsa, .git-credentials) were deleted
    without a word by the rebuild publish (and serve) does first."""
    from click.testing import CliRunner
    from infoflow.build import build
    from infoflow.cli import main
    site = tmp_path / "site"
    cfg = tiny_site_config(tmp_path, site)
    build(cfg, progress=False)
    strays = [".env", "data/id_rsa", ".git-credentials"]
    for rel in strays:
        (site / rel).write_text("secret")
    args = ["--prompts", cfg.prompts, "--out", site, "--model", cfg.model, "--cache-dir", cfg.cache, "--no-live"]
    for command in (["publish"], ["publish", "--dry-run"], ["serve", "--port", "0"]):
        result = CliRunner().invoke(main, [*command, *map(str, args)])
        assert result.exit_code == 1, (command, result.output)
        assert all(rel in result.output for rel in strays), result.output
        assert "Traceback" not in result.output
        for rel in strays:
            assert (site / rel).read_text() == "secret", (command, rel)


# ----------------------------------------------------------------------------- 6. infoflow.load


@pytest.fixture(scope="module")
def good_doc():
    """A real document (tiny random model), as msgpack-decoded: each case below spoils one field."""
    import msgpack
    from infoflow.datafile import encode
    from infoflow.decompose import decompose_variants
    from .conftest import tiny_model
    results = decompose_variants("hello there", tiny_model("gqa"), {"tokens": None, "words": "words"})
    return msgpack.unpackb(encode(results, {"id": "x", "title": "X", "text": "hello there"}), raw=False)


def _spoil(case: str, doc: dict) -> None:
    import zlib
    tokens = doc["variants"][0]
    if case == "huge-shape":                     # 9.3 GiB declared by a small file
        tokens["norm"]["shape"] = [30, 2, 100000, 100000]
    elif case == "deflate-bomb":                 # 64 MiB of zeros in 290 KB (the probe's: 1 GiB in 1 MB)
        tokens["norm"]["data"] = zlib.compress(bytes(64 << 20), 1)
    elif case == "logit-error-text":
        doc["logit_error"] = "abc"
    elif case == "tokens-vs-positions":
        doc["tokens"] = ["a"] * 10**6
    elif case == "group-id":
        groups = bytearray(tokens["groups"]["data"])
        groups[0:2] = (60000).to_bytes(2, "little")
        tokens["groups"] = {**tokens["groups"], "data": bytes(groups), "codec": None}
    elif case == "prediction-id":
        doc["strings"] = doc["strings"][:1]
    elif case == "q-zero":
        tokens["norm"]["q"] = 0
    else:
        raise ValueError(case)


HOSTILE_DOCS = {   # case: the field the error must name
    "huge-shape": "variants[tokens].norm", "deflate-bomb": "variants[tokens].norm",
    "logit-error-text": "logit_error", "tokens-vs-positions": "tokens", "group-id": "groups",
    "prediction-id": "predictions.ids", "q-zero": "variants[tokens].norm",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DOCS))
def test_load_checks_what_it_reads(case, good_doc, tmp_path):
    """The probes (D3): infoflow.load() gave a MemoryError, inflated a bomb to its end, raised a
    ValueError traceback, or loaded nonsense silently. Each is one DataFileError naming the field,
    with no more than a few MiB allocated."""
    import copy
    import tracemalloc
    import msgpack
    import infoflow
    from infoflow.datafile import DataFileError
    doc = copy.deepcopy(good_doc)
    _spoil(case, doc)
    path = tmp_path / "x.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError) as err:
            infoflow.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert HOSTILE_DOCS[case] in message and str(path) in message and "\n" not in message, message
    assert peak < (path.stat().st_size + (16 << 20)) * 2, f"{peak / 2**20:.0f} MiB allocated"


def test_load_still_reads_a_good_file(good_doc, tmp_path):
    import msgpack
    import infoflow
    path = tmp_path / "good.msgpack"
    path.write_bytes(msgpack.packb(good_doc, use_bin_type=True))
    d = infoflow.load(path)
    assert d.tokens == good_doc["tokens"] and d.attn_norm.shape[-1] == len(good_doc["variants"][0]["sources"])


# ----------------------------------------------------------------------------- 11. the small ones


def cli(*args):
    from click.testing import CliRunner
    from infoflow.cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


def refused_in_one_line(result, code: int = 1) -> str:
    """A CLI run that stopped the way a user mistake must: its exit code, a message, no traceback
    (CliRunner keeps an uncaught exception in result.exception; a ClickException is SystemExit)."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith(("Error", "Try"))]
    return lines[-1] if lines else result.output


def fake_site(folder: Path) -> Path:
    from infoflow.sitedir import MARKER
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"generator": "infoflow", "files": {}}))
    (folder / "data").mkdir()
    return folder


def test_build_refuses_an_out_inside_another_site(tmp_path):
    """A2: a site built inside another site's data/ was deleted by that site's next build."""
    from infoflow.config import ConfigError, SiteConfig
    outer = fake_site(tmp_path / "site1")
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(ONE)
    with pytest.raises(ConfigError, match=f"inside the site {outer}"):
        SiteConfig(prompts=prompts, out=outer / "data" / "sub").check()
    line = refused_in_one_line(cli("build", "--prompts", prompts, "--out", outer / "data" / "sub"))
    assert "inside the site" in line and not (outer / "data" / "sub").exists()


def test_add_leaves_a_read_only_file_alone_and_says_why_it_cannot_write(tmp_path, monkeypatch):
    """A4: `add` rewrote a 0444 prompts file; A5: a read-only folder or filesystem gave a traceback."""
    import errno
    path = tmp_path / "prompts.toml"
    path.write_text(ONE)
    path.chmod(0o444)
    try:
        line = refused_in_one_line(cli("add", "A dog ran", "--prompts", path))
        assert "read-only" in line and path.read_text() == ONE and (path.stat().st_mode & 0o777) == 0o444
    finally:
        path.chmod(0o644)
    import infoflow.files

    def read_only_fs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(infoflow.files.tempfile, "mkstemp", read_only_fs)
    line = refused_in_one_line(cli("add", "A dog ran", "--prompts", path))
    assert "Read-only file system" in line and str(tmp_path) in line and path.read_text() == ONE


def test_an_id_with_a_trailing_newline_is_refused():
    """A7: `$` matches before a final newline, so "cat\\n" passed as a URL slug."""
    from infoflow.prompts import PromptError, parse_prompts
    with pytest.raises(PromptError, match="must be a URL slug"):
        parse_prompts('[[prompt]]\nid = "cat\\n"\ntitle = "Cat"\ntext = "the cat"\n', "p.toml")


def test_a_full_disk_is_one_short_line_naming_the_file(tmp_path, monkeypatch):
    """A11: the disk-full message ran to 9,350 characters and named the site, not the cache that
    was full."""
    import errno
    import infoflow.files
    out = tmp_path / "site"
    cfg = tiny_site_config(tmp_path, out)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(infoflow.files.os, "fsync", full)
    line = refused_in_one_line(cli("build", "--prompts", cfg.prompts, "--out", out, "--model", cfg.model,
                                   "--cache-dir", cfg.cache, "--no-live"))
    assert "No space left on device" in line and str(Path(cfg.cache) / "results") in line, line
    assert len(line) < 500 and not out.exists()


@pytest.mark.parametrize("listed", ["../outside.txt", "/etc/hostname", "data/../../outside.txt", "a//b"])
def test_publish_refuses_a_marker_path_outside_the_site(listed, tmp_path):
    """B6: a `../` path in the site marker was published (a file from outside the site), counted,
    or gave a traceback."""
    from infoflow.publish import PublishError, publish
    from infoflow.sitedir import MARKER, sha256_file
    site = fake_site(tmp_path / "site")
    (tmp_path / "outside.txt").write_text("private")
    (site / "index.html").write_text("<p>hi</p>")
    marker = json.loads((site / MARKER).read_text())
    marker["files"] = {"index.html": sha256_file(site / "index.html"), listed: sha256_file(tmp_path / "outside.txt")}
    (site / MARKER).write_text(json.dumps(marker))
    with pytest.raises(PublishError, match="not a file inside the site") as err:
        publish(site, repo=tmp_path, dry_run=True)
    assert repr(listed) in str(err.value)


def test_a_fifo_in_the_cache_does_not_hang_the_build(tmp_path):
    """C2: a FIFO where a cache entry should be blocked the build forever."""
    import threading
    from infoflow.build import _entry_path, build
    from infoflow.model import fingerprint
    from infoflow.prompts import load_prompts
    cfg = tiny_site_config(tmp_path, tmp_path / "site")
    build(cfg, shard=(0, 1), progress=False)
    entry = _entry_path(cfg, load_prompts(cfg.prompts)[0], fingerprint(cfg.model))
    entry.unlink()
    os.mkfifo(entry)
    done = []
    worker = threading.Thread(target=lambda: done.append(build(cfg, shard=(0, 1), progress=False)), daemon=True)
    with pytest.warns(UserWarning, match="not a regular file"):
        worker.start()
        worker.join(60)
    if worker.is_alive():                        # the old code: release it, then fail
        os.close(os.open(entry, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the build hung on the FIFO")
    assert done and done[0].computed == ["cat"] and entry.is_file()


def test_decompose_with_a_cache_path_that_is_a_file(tmp_path):
    """C3: `decompose --cache-dir FILE` gave a traceback."""
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    line = refused_in_one_line(cli("decompose", "Hi", "--cache-dir", cache))
    assert f"{cache} is not a folder" in line
    line = refused_in_one_line(cli("decompose", "Hi", "--cache-dir", cache / "sub"))
    assert f"{cache} is not a folder" in line


def test_serve_does_not_follow_a_symlink_to_a_dotfile(tmp_path):
    """F2: a symlink inside the site to one of its dotfiles (the marker) served the dotfile."""
    import threading
    import urllib.error
    import urllib.request
    from infoflow.serve import make_server
    from infoflow.sitedir import MARKER
    site = fake_site(tmp_path / "site")
    (site / "index.html").write_text("<p>hi</p>")
    (site / "marker.json").symlink_to(MARKER)
    (site / "data" / "env.txt").symlink_to(Path("..") / MARKER)
    server = make_server(site, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert urllib.request.urlopen(f"{base}/index.html").read() == b"<p>hi</p>"
        for path in ("/marker.json", "/data/env.txt"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path)
            assert err.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("args, code, said", [
    (["serve", "--no-build", "--port", "-1"], 2, "--port"),
    (["serve", "--no-build", "--port", "70000"], 2, "--port"),
    (["decompose", "Hi", "--max-memory", "infG"], 2, "--max-memory"),
    (["decompose", "Hi", "--max-memory", "-4G"], 2, "--max-memory"),
    (["decompose", "Hi", "--device", "quantum"], 1, "--device 'quantum'"),
    (["build", "--device", "quantum"], 1, "--device 'quantum'"),
    (["decompose", "Hi", "--device", "cuda"], 1, "CUDA device"),
])
def test_bad_numbers_and_devices_are_refused_in_one_line(args, code, said, tmp_path, monkeypatch):
    """F5, G2: --port -1 or 70000, --max-memory infG, --device quantum, and cuda on a CPU-only
    torch gave tracebacks."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)    # a CPU-only torch, here too
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    fake_site(tmp_path / "site")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "gallery.toml").write_text(ONE)
    extra = ["--out", "site"] if args[0] in ("serve", "build") else []
    line = refused_in_one_line(cli(*args, *extra), code)
    assert said in line, line

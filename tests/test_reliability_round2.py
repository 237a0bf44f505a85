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

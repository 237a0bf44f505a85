"""infoflow: how information flows through a Llama-family model, token by token."""
__version__ = "0.1.0"
ENGINE_VERSION = "1"  # bump when the numbers a decomposition produces change

from .decompose import Decomposition, InputError, decompose  # noqa: E402
from .model import DEFAULT_MODEL, ModelError, load_model  # noqa: E402

__all__ = ["Decomposition", "InputError", "ModelError", "decompose", "load_model", "DEFAULT_MODEL",
           "__version__"]


def load(path, variant: str = "tokens"):
    """Read a data file written by `infoflow build` back into a Decomposition."""
    from .datafile import load as _load
    return _load(path, variant)


__all__.append("load")

"""One site config, made by one set of command-line options, for build, serve and publish.

As MkDocs passes one validated config from `build` to `gh-deploy`, every command that builds a
site makes a `SiteConfig` with `site_options` and hands it unchanged to `build()`, so `serve` and
`publish` rebuild exactly the site that `build` made. Its errors come from `SiteConfig.check()`.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PROMPTS = Path("prompts/gallery.toml")
DEFAULT_OUT = Path("build")
DEFAULT_MAX_TOKENS = 256
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


class ConfigError(ValueError):
    """The options do not make a site that can be built; the message says what to change."""


@dataclass(frozen=True)
class SiteConfig:
    prompts: Path = DEFAULT_PROMPTS
    out: Path = DEFAULT_OUT
    model: str | None = None          # None: the default model
    dtype: str = "float32"            # the forward pass
    device: str = "cpu"
    cache: str | None = None          # None: $INFOFLOW_CACHE or ~/.cache/infoflow
    max_tokens: int = DEFAULT_MAX_TOKENS
    top_k: int = 5
    live: bool = True                 # export the model for the in-browser page (live/)
    models: tuple[str, ...] = ()      # the gallery's models; () : see gallery_models()

    def __post_init__(self):
        object.__setattr__(self, "prompts", Path(self.prompts))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "models", tuple(self.models or ()))

    def check(self) -> "SiteConfig":
        """Refuse an output folder that a build must never replace; return self."""
        check_out_dir(self.out, self.prompts)
        check_device(self.device)
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, not {self.dtype!r}.")
        if self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be at least 1, not {self.max_tokens}.")
        check_models(self.models, "--models")
        if self.model and self.models:
            raise ConfigError(f"--model {self.model} and --models {','.join(self.models)}: pass one of them "
                              "(--model builds a one-model gallery, --models names every model of the gallery).")
        return self

    def identity(self) -> dict:
        """What decides the site's content (recorded in the site, compared by serve and publish)."""
        return {"model": self.model, "models": list(self.models), "dtype": self.dtype,
                "max_tokens": self.max_tokens, "top_k": self.top_k, "prompts": str(self.prompts),
                "live": self.live}

    def as_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def check_models(models, where: str) -> None:
    """Refuse an empty name or a model named twice (where: the option or file that named them)."""
    from .gallery_models import model_slug

    seen = {}
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: a model name is empty; name each model once, e.g. "
                              "SmolLM2-135M-Instruct,gemma3-270m.")
        slug = model_slug(name)
        if slug in seen:
            raise ConfigError(f"{where}: {seen[slug]!r} and {name!r} are the same model (or share the URL "
                              f"name {slug!r}); name each model once.")
        seen[slug] = name


def check_out_dir(out: Path, prompts: Path) -> None:
    """A build replaces `out` whole; refuse folders that hold, or are above, the user's files.

    `out` itself is checked by the build (empty, missing, or marked as a site it wrote); here
    we refuse the places no build may ever take: the current folder and its ancestors, the
    prompts file's folder and its ancestors, the home folder and the filesystem root.
    """
    target = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(Path.cwd()))
    prompts_dir = Path(os.path.realpath(Path(prompts).parent if str(prompts) else cwd))
    home = Path(os.path.realpath(Path.home()))
    why = None
    if target == cwd or target in cwd.parents:
        why = "it is the current folder or one above it"
    elif target == prompts_dir or target in prompts_dir.parents:
        why = f"it holds the prompts file {prompts}"
    elif target == home or target == Path(target.anchor):
        why = "it is your home folder or the filesystem root"
    if why:
        raise ConfigError(f"--out {out}: refusing to build there, because {why} and a build replaces its "
                          "output folder whole. Choose a folder of its own, e.g. --out build.")
    from .sitedir import is_site

    for above in target.parents:
        if is_site(above):
            raise ConfigError(f"--out {out}: refusing to build there, because it is inside the site {above}, "
                              "whose next build replaces that folder whole (and this site with it). "
                              "Choose a folder outside it.")


def check_device(device: str) -> None:
    """cpu, auto, cuda, cuda:N or mps, and only one this machine's torch has."""
    if device in ("cpu", "auto"):
        return
    if not re.fullmatch(r"cuda(:\d{1,3})?|mps", device or ""):
        raise ConfigError(f"--device {device!r}: use cpu, cuda, cuda:N, mps or auto.")
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"--device {device}: this torch sees {count} CUDA device(s)"
                              + ("" if torch.version.cuda else " (it is a CPU-only build)")
                              + "; use --device cpu.")
    elif not torch.backends.mps.is_available():
        raise ConfigError("--device mps: this machine's torch has no MPS device; use --device cpu.")


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def model_options(f):
    """--model, --dtype, --device, --cache-dir: which model, run how (build, serve, publish, decompose)."""
    import click

    return _apply(f, [
        click.option("--model", default=None,
                     help="Hugging Face id or local folder (default: SmolLM2-135M-Instruct, offline)."),
        click.option("--dtype", default="float32", type=click.Choice(DTYPE_NAMES), show_default=True,
                     help="Float type of the model's forward pass."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto."),
        click.option("--cache-dir", "cache", default=None, envvar="INFOFLOW_CACHE",
                     help="Converted models and cached results [env INFOFLOW_CACHE; default ~/.cache/infoflow]."),
    ])


def site_options(f):
    """The options that make a SiteConfig; shared by build, serve and publish."""
    import click

    return _apply(f, [
        click.option("--prompts", "prompts", default=str(DEFAULT_PROMPTS), show_default=True,
                     type=click.Path(dir_okay=False, path_type=Path), help="The prompts file (TOML)."),
        click.option("--out", default=str(DEFAULT_OUT), show_default=True,
                     type=click.Path(file_okay=False, path_type=Path), help="The site folder."),
        model_options,
        click.option("--max-tokens", default=DEFAULT_MAX_TOKENS, show_default=True, type=int,
                     help="Refuse prompts longer than this."),
        click.option("--models", default=None, metavar="A,B",
                     help="The gallery's models, comma-separated, the first one's pages at the old URLs "
                          "[default: the prompts file's `models`, else every offline model installed]."),
        click.option("--live/--no-live", default=True, show_default=True,
                     help="Export the default model for the in-browser page (live/), ~97 MB."),
    ])


def config_from_options(kwargs: dict) -> SiteConfig:
    """Pop the site_options out of a command's kwargs and make the validated config."""
    names = ("prompts", "out", "model", "dtype", "device", "cache", "max_tokens", "live")
    models = kwargs.pop("models", None)
    models = tuple(m.strip() for m in models.split(",")) if models is not None else ()
    return SiteConfig(**{n: kwargs.pop(n) for n in names}, models=models).check()

"""The command line: a small click group over the pipeline."""
from __future__ import annotations

import sys
import time

import click

from . import __version__
from .decompose import DEFAULT_MAX_TOKENS, InputError, decompose, get_model
from .model import DTYPES, ModelError


def model_options(f):
    f = click.option("--model", default=None, help="Hugging Face id or local folder (default: SmolLM2-135M-Instruct, offline).")(f)
    f = click.option("--dtype", default="float32", type=click.Choice(list(DTYPES)), show_default=True,
                     help="Float type of the model's forward pass.")(f)
    f = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)
    f = click.option("--cache-dir", default=None, envvar="INFOFLOW_CACHE",
                     help="Converted models and cached results [env INFOFLOW_CACHE; default ~/.cache/infoflow].")(f)
    return f


@click.group()
@click.version_option(__version__, prog_name="infoflow")
def main():
    """See, token by token, how information flows through a Llama-family model."""


@main.command("decompose")
@click.argument("prompt")
@model_options
@click.option("--groups", type=click.Choice(["tokens", "words"]), default="tokens", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Float type of the decomposition itself.")
@click.option("--max-tokens", default=DEFAULT_MAX_TOKENS, show_default=True, type=int)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--no-lens", is_flag=True, help="Skip the logit lens (the most expensive extra).")
def decompose_cmd(prompt, model, dtype, device, cache_dir, groups, precision, max_tokens, chat, no_lens):
    """Decompose PROMPT and print its tokens, predictions and reconstruction error."""
    t0 = time.perf_counter()
    try:
        lm = get_model(model, dtype=dtype, device=device, cache=cache_dir)
        t1 = time.perf_counter()
        d = decompose(prompt, lm, groups=groups, dtype=precision, logit_lens=not no_lens,
                      chat=chat, max_tokens=max_tokens)
    except (InputError, ModelError) as e:
        raise click.ClickException(str(e))
    t2 = time.perf_counter()
    click.echo(f"model      {d.model['id']}  ({d.model['fingerprint']}, {d.model['dtype']})")
    click.echo(f"tokens     {d.n_tokens}: " + " ".join(repr(t) for t in d.tokens))
    if groups != "tokens":
        click.echo(f"sources    {len(d.sources)}: " + " ".join(repr(t) for t in d.sources))
    click.echo("next token " + ", ".join(f"{d.token_text[int(i)]!r} {p:.3f}"
                                         for i, p in zip(d.pred_ids[-1], d.pred_probs[-1])))
    l, k = divmod(int(d.recon_error.argmax()), 2)
    click.echo(f"worst reconstruction error {d.worst_recon_error:.2e} (layer {l} {'attn mlp'.split()[k]}); "
               f"logits {d.logit_error:.2e}")
    click.echo(f"time       load {t1 - t0:.2f} s, decompose {t2 - t1:.2f} s "
               f"(trace {d.timings['trace']:.2f}, engine {d.timings['decompose']:.2f}"
               + (f", logit lens {d.timings['logit_lens']:.2f}" if 'logit_lens' in d.timings else "") + ")")


if __name__ == "__main__":
    sys.exit(main())

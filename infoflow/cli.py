"""The command line: a small click group over the pipeline."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from . import __version__
from .config import DEFAULT_MAX_TOKENS, DEFAULT_PROMPTS, ConfigError, SiteConfig, config_from_options, model_options, site_options


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        size = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):        # OverflowError: inf, 1e999
        size = -1
    if size <= 0:
        raise click.BadParameter(f"{text!r}: write a size like 512M or 4G", param_hint="--max-memory")
    return size


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
@click.option("--max-memory", default="4G", show_default=True, help="Working-memory budget, e.g. 512M, 4G.")
@click.option("--no-lens", is_flag=True, help="Skip the logit lens (the most expensive extra).")
@click.option("--remote", is_flag=True,
              help="Run on NDIF through nnsight (--model: a hub id the server serves, or the folder it was deployed from).")
@click.option("--ndif-host", default=None, envvar="NDIF_HOST",
              help="NDIF API to send --remote runs to [env NDIF_HOST; default nnsight's, https://api.ndif.us].")
@click.option("--timeout", default=None, type=float, envvar="INFOFLOW_NDIF_TIMEOUT",
              help="--remote: seconds without a word from the server before giving up "
                   "[env INFOFLOW_NDIF_TIMEOUT; default 600].")
@click.option("--save-summary", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the summary arrays (norm, delta_norm, proj, recon_error, pred_ids, "
                   "pred_logits, logit_attr) to this .npz file, local or remote alike.")
def decompose_cmd(prompt, model, dtype, device, cache, groups, precision, max_tokens, chat, max_memory,
                  no_lens, remote, ndif_host, timeout, save_summary):
    """Decompose PROMPT and print its tokens, predictions and reconstruction error."""
    if remote:
        return _decompose_remote(prompt, model, groups=groups, chat=chat, max_tokens=max_tokens,
                                 host=ndif_host, timeout=timeout, save=save_summary)
    from .config import check_device
    from .decompose import InputError, decompose, get_model
    from .model import ModelError

    budget = parse_size(max_memory)             # a bad option is refused before the model loads
    t0 = time.perf_counter()
    try:
        check_device(device)
        lm = get_model(model, dtype=dtype, device=device, cache=cache)
        t1 = time.perf_counter()
        d = decompose(prompt, lm, groups=groups, dtype=precision, logit_lens=not no_lens,
                      chat=chat, max_tokens=max_tokens, max_memory=budget)
    except (InputError, ModelError, ConfigError) as e:
        raise click.ClickException(str(e))
    t2 = time.perf_counter()
    est = d.timings["estimate"]
    click.echo(f"estimate   {est['bytes'] / 2**20:.0f} MiB working memory, {est['macs'] / 1e9:.1f} G multiply-adds"
               + (f", ~{est['seconds']:.1f} s at this machine's matmul rate" if est["seconds"] else ""))
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
    click.echo(f"MLP order  {d.timings['ordering']}")
    if save_summary:
        _save_summary(save_summary, local_summary(d))
    click.echo(_why_line(d))


def _why_line(d) -> str:
    """The top prediction's strongest sources by demeaned logit attribution, in one line."""
    first = {}
    for p, g in enumerate(d.groups.tolist()):
        first.setdefault(g, p)
    named = ", ".join(f"{d.sources[s]!r}" + (f"@{first[s]}" if s in first else "") + f" {v:+.2f}"
                      for s, v in d.top_sources())
    return (f"why        {d.top_prediction()[0]!r} <- {named} "
            "(demeaned logit attribution: each source's part of the logit minus the vocabulary's mean)")


def local_summary(d) -> dict:
    """A Decomposition's arrays in the shape remote.summarize_in_trace returns them."""
    import numpy as np

    return {"norm": np.stack([d.attn_norm, d.mlp_norm], 1),
            "delta_norm": np.stack([d.attn_delta_norm, d.mlp_delta_norm], 1),
            "proj": np.stack([d.attn_proj, d.mlp_proj], 1), "recon_error": d.recon_error,
            "pred_ids": d.pred_ids, "pred_logits": d.pred_logits, "logit_attr": d.logit_attr}


@main.command("graph")
@click.argument("prompt")
@click.option("--target", default=None, help="The next token to explain, one token (default: the top prediction).")
@click.option("--contrast", default=None, help="Measure the target against this token (default: the demeaned logit).")
@click.option("--position", default=-1, show_default=True, type=int, help="The position predicted from (-1: the last).")
@model_options
@click.option("--groups", type=click.Choice(["tokens", "words"]), default="tokens", show_default=True,
              help="The sources each node's effect is split by.")
@click.option("--node-threshold", default=0.8, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Keep nodes, largest |effect| first, up to this share of the total.")
@click.option("--edge-threshold", default=0.98, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Then keep edges among them, largest |weight| first, up to this share.")
@click.option("--max-tokens", default=DEFAULT_MAX_TOKENS, show_default=True, type=int)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the pruned graph to FILE in circuit-tracer's graph-file schema.")
@click.option("--force", is_flag=True, help="Let --json replace an existing file.")
@click.option("--check", is_flag=True, help="Also run the ablation check in the real model and print it.")
def graph_cmd(prompt, target, contrast, position, model, dtype, device, cache, groups, node_threshold,
              edge_threshold, max_tokens, chat, json_path, force, check):
    """The exact attribution graph of one logit of PROMPT: T and its strongest paths (docs/graph.md)."""
    from .decompose import InputError, get_model, graph
    from .model import ModelError
    from .paths import format_paths

    if json_path is not None:                # refuse before computing anything
        _check_json_target(json_path, force)
    try:
        lm = get_model(model, dtype=dtype, device=device, cache=cache)
        g = graph(prompt, target=target, contrast=contrast, position=position, model=lm, groups=groups,
                  chat=chat, max_tokens=max_tokens, node_threshold=node_threshold, edge_threshold=edge_threshold)
    except (InputError, ModelError) as e:
        raise click.ClickException(str(e))
    click.echo(format_paths(g))
    if check:
        from .ablate import ablation_check
        g.check = ablation_check(lm, g)
        click.echo(g.check.format())
    if json_path is not None:
        _write_graph_json(g, json_path)
        click.echo(f"wrote {json_path} (circuit-tracer's graph-file schema)")


def _check_json_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; pass --force to replace it, or name another file.")
    if not path.parent.is_dir():
        raise click.ClickException(f"{path.parent} is not a folder; create it or name another file.")


def _write_graph_json(g, path: Path) -> None:
    import json

    from .files import atomic_write
    from .graphfile import to_circuit_tracer
    try:
        text = json.dumps(to_circuit_tracer(g), ensure_ascii=False, allow_nan=False)
    except ValueError as e:                  # a NaN would make a file other tools refuse
        raise click.ClickException(f"the graph holds a number JSON cannot carry ({e}); nothing written.")
    try:
        atomic_write(path, text)
    except OSError as e:
        raise click.ClickException(f"could not write {path}: {e.strerror or e}.")


def _save_summary(path: Path, summary: dict) -> None:
    import numpy as np

    try:
        np.savez(path, **{k: np.asarray(v) for k, v in summary.items()})
    except OSError as e:
        raise click.ClickException(f"could not write {path}: {e.strerror or e}")


def _decompose_remote(prompt, model, *, groups, chat, max_tokens, host, timeout, save):
    """--remote: only the config and tokenizer come to this machine; the weights stay on NDIF."""
    from .decompose import InputError, resolve_groups, tokenize
    from .remote import RemoteError, decompose_remote, resolve_host
    from .tokens import display_tokens

    if not model:
        raise click.ClickException("--remote needs --model: a Hugging Face id that NDIF serves (e.g. "
                                   "meta-llama/Llama-3.1-8B), or the folder your own NDIF was deployed from.")
    t0 = time.perf_counter()
    from .model import ModelError, check_folder, check_hub_config

    try:
        if Path(model).is_dir():                 # a folder's code never runs (issue 26, item 1)
            check_folder(Path(model))
        else:
            check_hub_config(model)
        host = resolve_host(host)
        nn_model = _remote_model(model)
        lm = _TokenizerOnly(nn_model.tokenizer)
        ids = tokenize(lm, prompt, chat=chat, max_tokens=max_tokens)
        tokens = display_tokens(nn_model.tokenizer, ids)
        special_ids = set(getattr(nn_model.tokenizer, "all_special_ids", []) or [])
        kind, g = resolve_groups(groups, tokens, [i in special_ids for i in ids])
        info = {}
        import torch
        summary = decompose_remote(nn_model, torch.tensor([ids]), remote=True, host=host,
                                   groups=None if kind == "tokens" else g, timeout=timeout, info=info)
    except (RemoteError, InputError, ModelError) as e:
        raise click.ClickException(str(e))
    tok = nn_model.tokenizer
    pred = summary["pred_ids"][-1].tolist()
    click.echo(f"model      {info['model_key']} on {host}")
    click.echo(f"tokens     {len(ids)}: " + " ".join(repr(t) for t in tokens))
    if kind != "tokens":
        click.echo(f"sources    {max(g) + 1} ({kind})")
    click.echo("next token " + ", ".join(repr(tok.decode([i])) for i in pred))
    click.echo(f"worst reconstruction error {float(summary['recon_error'].max()):.2e}")
    click.echo(f"wire       {_wire_line(info)}")
    click.echo(f"time       {time.perf_counter() - t0:.1f} s (remote)")
    if save:
        _save_summary(save, summary)


class _TokenizerOnly:
    """What decompose.tokenize reads of a loaded model, for a model whose weights stay remote."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.info = {"id": getattr(tokenizer, "name_or_path", "the model")}


def _remote_model(model: str):
    """The model as nnsight's meta-device wrapper: config and tokenizer only, no weights."""
    import warnings

    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The tokenizer is passed in: transformers' pipeline cannot infer one for a
            # pre-built (meta) model from a local folder.
            return TransformersModel(model, task="text-generation", attn_implementation="eager",
                                     trust_remote_code=False,
                                     tokenizer=AutoTokenizer.from_pretrained(model, trust_remote_code=False))
    except OSError as e:
        raise click.ClickException(f"could not load {model!r}'s config and tokenizer ({e}); a hub id "
                                   "needs network access to the hub, a folder needs config.json and "
                                   "the tokenizer files.")


def _wire_line(info: dict) -> str:
    """Bytes up and down, and the client-side time from sending to each status and to the result."""
    at, t0 = info.get("status_at", {}), info.get("start")
    marks = ", ".join(f"{name.lower()} {at[name] - t0:.2f}" for name in at)
    done = f", result {info['done'] - t0:.2f} s" if "done" in info else ""
    return f"up {info.get('up_bytes', 0):,} B, down {info.get('down_bytes', 0):,} B; at {marks}{done}"


# ----------------------------------------------------------------------------- site commands


def _errors():
    """Every failure a site command expects, each already worded for the user."""
    from .build import BuildError
    from .model import ModelError
    from .prompts import PromptError
    from .publish import PublishError
    from .serve import ServeError
    from .sitedir import SiteDirError
    return (ConfigError, PromptError, BuildError, ModelError, SiteDirError, PublishError, ServeError)


def _site_config(kwargs: dict) -> SiteConfig:
    try:
        return config_from_options(kwargs)
    except ConfigError as e:
        raise click.ClickException(str(e))


def _rebuild(cfg: SiteConfig) -> None:
    """serve and publish: rebuild cfg.out incrementally, but never into a site built with other
    options (that would silently swap the model under the user's site)."""
    from .build import build
    from .sitedir import read_marker, resolve_out

    from .publish import strangers

    marker = read_marker(resolve_out(cfg.out))
    if marker and (found := strangers(resolve_out(cfg.out))):
        raise click.ClickException(
            f"refusing to rebuild {cfg.out}: it holds files the build did not write ({', '.join(found[:20])}"
            + (f", and {len(found) - 20} more" if len(found) > 20 else "") + "), which the rebuild would "
            "delete. Move them out of the folder (they are yours), then run this again.")
    if marker:
        built_with = {"models": [], **marker.get("config", {})}     # sites from before --models
        shown = lambda k, v: ",".join(v) or "(default)" if k == "models" else v  # noqa: E731
        differ = [k for k in ("model", "models", "dtype", "max_tokens", "live") if built_with.get(k) != cfg.identity()[k]]
        if differ:
            raise click.ClickException(
                f"{cfg.out} was built with " + ", ".join(f"--{k.replace('_', '-')} {shown(k, built_with.get(k))}"
                                                        for k in differ)
                + "; this command would rebuild it with " + ", ".join(f"{shown(k, cfg.identity()[k])}" for k in differ)
                + ". Pass the same options as the build (or --no-build).")
    click.echo(build(cfg).line())


@main.command("build")
@site_options
@click.option("--only", multiple=True, metavar="ID", help="Compute only these prompts (repeatable).")
@click.option("--keep-going", is_flag=True, help="Build the other prompts when one fails; exit non-zero.")
@click.option("--shard", default=None, metavar="I/N",
              help="Compute only shard I of N (of the prompts --only selects) into the cache; write no site.")
@click.option("--merge", "merge_from", multiple=True, type=click.Path(exists=True, file_okay=False),
              metavar="CACHE", help="Assemble the site from these shard caches; compute nothing (repeatable).")
def build_cmd(only, keep_going, shard, merge_from, **kwargs):
    """Decompose every prompt (reusing cached results) and write the static site to OUT."""
    from .build import build, merge_shards

    cfg = _site_config(kwargs)
    shard_pair = None
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise click.BadParameter(f"{shard!r}: write I/N with 0 <= I < N, e.g. 0/4", param_hint="--shard")
        shard_pair = (i, n)
    try:
        if merge_from:
            summary = merge_shards(list(merge_from), cfg, only=only, keep_going=keep_going)
        else:
            summary = build(cfg, only=only, keep_going=keep_going, shard=shard_pair)
    except _errors() as e:
        raise click.ClickException(f"{e}")
    for pid, msg in summary.skipped:
        click.echo(f"skipped {msg}")
    for pid, msg in summary.failed:
        click.echo(f"FAILED {msg}", err=True)
    click.echo(f"{'shard ' + shard + ' cached' if shard else f'built {cfg.out}/'}: {summary.line()}")
    if summary.failed:
        sys.exit(1)


def _short_title(text: str, width: int = 60) -> str:
    """A title made from the prompt text: one line, cut at a word near `width` characters."""
    one_line = " ".join(text.split())
    if len(one_line) <= width:
        return one_line
    cut = one_line[:width].rsplit(" ", 1)[0] or one_line[:width]
    return cut.rstrip(",.;:") + "…"


@main.command("add")
@click.argument("text")
@click.option("--title", default=None, help="Default: the text, shortened.")
@click.option("--tags", default="", help="Comma-separated tags.")
@click.option("--note", default=None, help="What to look at, in plain text.")
@click.option("--id", "pid", default=None, help="URL slug (default: made from the title).")
@click.option("--chat", is_flag=True, help="Wrap the text in the model's chat template.")
@click.option("--prompts", "prompts_path", default=str(DEFAULT_PROMPTS), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path))
def add_cmd(text, title, tags, note, pid, chat, prompts_path):
    """Append a prompt to the prompts file (created if missing), keeping its comments."""
    from .prompts import PromptError, add_prompt

    try:
        entry = add_prompt(prompts_path, text=text, title=title or _short_title(text),
                           tags=[t.strip() for t in tags.split(",") if t.strip()],
                           note=note, pid=pid, chat=chat)
    except PromptError as e:
        raise click.ClickException(str(e))
    click.echo(f"added {entry.id!r} to {prompts_path}; run `infoflow build` to compute it")


@main.command("serve")
@site_options
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-build", is_flag=True, help="Serve OUT as it is.")
def serve_cmd(port, no_build, **kwargs):
    """Build if needed, then serve the site on 127.0.0.1 (browsers refuse data over file://)."""
    from .serve import make_server

    cfg = _site_config(kwargs)
    try:
        if not no_build:
            _rebuild(cfg)
        server = make_server(cfg.out, port)
    except _errors() as e:
        raise click.ClickException(str(e))
    with server:
        click.echo(f"serving {cfg.out}/ at http://127.0.0.1:{port}/  (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@main.command("publish")
@site_options
@click.option("--remote", default="origin", show_default=True)
@click.option("--branch", default="gh-pages", show_default=True)
@click.option("--message", default=None, help="Commit message on the pages branch.")
@click.option("--cname", default=None, help="Custom domain (else site_src/CNAME, else the site's own CNAME).")
@click.option("--dry-run", is_flag=True, help="Say what would be rebuilt and pushed; change nothing.")
@click.option("--no-build", is_flag=True, help="Publish OUT as it is, without the incremental rebuild.")
@click.option("--force", is_flag=True, help="Remove files from the branch that the last publish did not write.")
def publish_cmd(remote, branch, message, cname, dry_run, no_build, force, **kwargs):
    """Rebuild if stale, then push exactly the files the build wrote to a GitHub Pages branch."""
    from .build import stale_reason
    from .publish import publish

    cfg = _site_config(kwargs)
    try:
        if dry_run:
            from .sitedir import read_marker, resolve_out
            reason = None if no_build else stale_reason(cfg)
            click.echo(f"would rebuild first: {reason}" if reason else "would not rebuild: the site is up to date")
            if read_marker(resolve_out(cfg.out)) is None:
                return
            if reason:
                click.echo("the site as it is now:")
        elif not no_build:
            _rebuild(cfg)
        result = publish(cfg.out, remote=remote, branch=branch, message=message, cname=cname, dry_run=dry_run,
                         force=force)
    except _errors() as e:
        raise click.ClickException(str(e))
    click.echo(result.message)
    if dry_run:
        for path in result.paths:
            click.echo(f"  {path}")
    for path in result.removed:
        click.echo(f"  - {path}")


if __name__ == "__main__":
    sys.exit(main())

"""Run the decomposition *inside* an nnsight trace, so it can execute on NDIF.

`summarize_in_trace` is called in the body of a trace: it reads the frozen quantities and the
weights through nnsight's envoys, runs the same engine functions as a local decomposition,
and returns only small tensors (norms, shares, top-k), so kilobytes come back from a remote
run, not P²·d tensors. The capture is trace.walk, the same one the local path saves. With
remote=True, the source of arch, weights, engine, logits and trace travels with the request
(`nnsight.register`).

`make ndif-check` runs this path against NDIF's own server stack on one machine
(docs/ndif.md); the unit tests run the in-trace function locally (remote=False) and the
client's failure modes against fake servers.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import arch, engine, trace, weights
from . import logits as unembedding

# nnsight's default host; a request there always needs a key (a local server may not).
PUBLIC_HOST = "https://api.ndif.us"
# Seconds without a word from the server (no status update, no bytes) before we give up.
DEFAULT_TIMEOUT = 600.0


class RemoteError(RuntimeError):
    """Remote execution failed; the message (one line) says what happened and what to do."""


def summarize_in_trace(nn_model, top_k: int = 5, dtype=torch.float32, groups=None, config=None) -> dict:
    """Body of a trace: capture, decompose, reduce. Returns a dict of small tensors.

    groups: None (each token its own source) or one source id per position, as
    decompose.resolve_groups makes them (the bias source, if any, is appended here).
    config: the model's config, read on the client: in NDIF's sandbox the model in the
    trace has no `.config` (docs/ndif.md).
    """
    config = nn_model.config if config is None else config
    captured = trace.walk(nn_model, arch.recipe_for(config))
    final, logits = captured.resid_final, captured.logits
    with torch.no_grad():
        layers, unembed = weights.extract_weights(nn_model, dtype=dtype, device=final.device,
                                                  config=config)
        bias = weights.has_bias_source(layers, unembed)
        tri = engine.triangle(final.shape[0], bias, device=final.device)
        grouping = None
        if groups is not None:
            grouping = torch.tensor(list(groups) + ([max(groups) + 1] if bias else []),
                                    device=final.device)
        result = engine.decompose_stack(captured, layers, tri, [grouping], dtype=dtype)
        st = result.stats[0]
        lg = logits.to(dtype)
        top_logits, pred_ids = lg.topk(top_k, dim=-1)
        scale = unembedding.final_scale(final.to(dtype), unembed)
        attr = unembedding.logit_attribution(result.final, tri, scale, unembed, pred_ids, grouping)
        return {"norm": st.norm, "delta_norm": st.delta_norm, "proj": st.proj,
                "recon_error": result.recon_error, "pred_ids": pred_ids.cpu(),
                "pred_logits": top_logits.cpu(), "logit_attr": attr.cpu()}


def resolve_host(host: str | None = None) -> str:
    """The NDIF API to use: the argument, else $NDIF_HOST, else nnsight's configured host."""
    from nnsight import CONFIG

    host = (host or os.environ.get("NDIF_HOST") or CONFIG.API.HOST).rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise RemoteError(f"NDIF host {host!r} must be a URL starting with http:// or https://, "
                          "e.g. http://127.0.0.1:8001.")
    return host


def local_model_key(nn_model) -> None:
    """Let a model loaded from a local folder name itself by that folder, without the hub.

    nnsight canonicalizes a model's repo id with one hub query before it builds the key a
    request names the model by; a folder path is not a hub id, and a machine serving its
    own NDIF may have no hub at all. The server was deployed from the same folder path,
    so the key must carry it verbatim (see make ndif-check, docs/ndif.md).
    """
    from nnsight.modeling import huggingface

    repo = getattr(nn_model, "repo_id", None)
    if isinstance(repo, str) and Path(repo).is_dir():
        huggingface._ID_CACHE.setdefault(repo, repo)


def _backend_class():
    """A RemoteBackend that also records what crossed the wire and when each status came."""
    from nnsight.intervention.backends.remote import RemoteBackend

    class MeasuredBackend(RemoteBackend):
        def __init__(self, *args, silence: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.wire = {"up_bytes": 0, "down_bytes": 0, "status_at": {}, "start": time.perf_counter()}
            self.display = _Watchdog(self.display, silence)

        def _serialize(self, tracer):
            blob = super()._serialize(tracer)
            self.wire["up_bytes"] = len(blob)
            return blob

        def note(self, response):
            self.wire["status_at"].setdefault(str(response.status.name), time.perf_counter())
            return super().note(response)

        def finalize(self, content):
            self.wire["down_bytes"] = len(content)
            out = super().finalize(content)
            self.wire["done"] = time.perf_counter()
            return out

    return MeasuredBackend


class _Watchdog:
    """Wraps the backend's status display to end a wait the server has gone silent on.

    nnsight's wait loop reads the websocket with a timeout and, on each timeout, calls the
    display's refresh() and reads again, forever; so refresh() is where a deadline can act.
    Every status update resets the clock.
    """

    def __init__(self, display, silence: float):
        self.display, self.silence, self.last = display, silence, time.monotonic()

    def update(self, response):
        self.last = time.monotonic()
        return self.display.update(response)

    def refresh(self):
        if time.monotonic() - self.last > self.silence:
            raise TimeoutError(f"no status update in {self.silence:.0f} s")
        return self.display.refresh()

    def __getattr__(self, name):
        return getattr(self.display, name)


@contextmanager
def _quiet_with_timeout(timeout: float):
    """nnsight's live status display off, and every websocket read bounded to 5 s.

    With reads bounded, nnsight's wait loop calls the display's refresh() at least every 5 s,
    where _Watchdog enforces `timeout`; the websocket handshake gets the same bound.
    """
    import websocket
    from nnsight import CONFIG

    old_logging, old_timeout = CONFIG.APP.REMOTE_LOGGING, websocket.getdefaulttimeout()
    CONFIG.APP.REMOTE_LOGGING = False
    websocket.setdefaulttimeout(min(timeout, 5.0))
    try:
        yield
    finally:
        CONFIG.APP.REMOTE_LOGGING = old_logging
        websocket.setdefaulttimeout(old_timeout)


def _one_line(text: str, limit: int = 300) -> str:
    """The server's description, reduced to its last meaningful line (tracebacks end there)."""
    lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
    line = lines[-1] if lines else "no description"
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _served_models(host: str) -> dict | None:
    """{deployment: repo id} of what the server has deployed (its /status), or None if unknown.

    NDIF 0.1.2 names a deployment "<replica>:<actor class>:<model key>"."""
    import httpx

    try:
        r = httpx.get(f"{host}/status", timeout=httpx.Timeout(5.0, read=15.0))
        r.raise_for_status()
        deployments = r.json().get("deployments", {})
        return {v.get("model_key") or name: str(v.get("repo_id") or _repo_of(v.get("model_key") or name))
                for name, v in deployments.items() if isinstance(v, dict)}
    except Exception:   # a hint only: no status, no hint
        return None


def _repo_of(model_key: str) -> str:
    """The repo id (or folder) in a model key: "<class path>:{"repo_id": ..., ...}"."""
    try:
        return str(json.loads(model_key[model_key.index("{"):])["repo_id"])
    except (ValueError, KeyError, TypeError):
        return model_key


def _explain(e: BaseException, host: str, timeout: float, model_key: str) -> str:
    """One line for each way a remote request can fail."""
    import websocket
    from nnsight.intervention.backends.remote import RemoteError as NNsightRemoteError

    if isinstance(e, websocket.WebSocketTimeoutException) or isinstance(e, TimeoutError):
        return (f"NDIF at {host} sent nothing for {timeout:.0f} s; gave up (raise --timeout, "
                "or check the server).")
    if isinstance(e, websocket.WebSocketBadStatusException):
        return (f"{host} did not accept NDIF's websocket (HTTP {e.status_code}); is it an NDIF "
                "API? Check --ndif-host / NDIF_HOST.")
    if isinstance(e, websocket.WebSocketConnectionClosedException):
        return f"NDIF at {host} closed the connection mid-request; check the server and retry."
    if isinstance(e, NNsightRemoteError):
        msg = str(e)
        if any(s in msg for s in ("API key", "api key", "401", "403")):
            return f"NDIF at {host} refused the request: {_one_line(msg)} (set NDIF_API_KEY)."
        if msg.startswith("Failed to send request"):
            return f"NDIF at {host} did not take the request: {_one_line(msg)}"
        if "has attribute 'weight'" in msg:   # measured: NDIF 0.1.2's sandbox, docs/ndif.md
            return (f"NDIF at {host} ran the request in its sandbox, where the model has no weights "
                    "to read; the decomposition reads them, so it needs a trusted key (or a server "
                    f"with authentication off): {_one_line(msg)}")
        served = _served_models(host)
        if served is not None and not any(model_key in k for k in served):
            others = ", ".join(sorted(set(served.values()))) or "no model"
            return (f"NDIF at {host} does not serve {_repo_of(model_key)} (it serves {others}); "
                    f"the request failed: {_one_line(msg)}")
        return f"NDIF at {host} failed the request for {model_key}: {_one_line(msg)}"
    if isinstance(e, (ConnectionError, OSError)):
        return (f"could not reach NDIF at {host} ({_one_line(str(e)) or type(e).__name__}); "
                "check the host and the network, or run without --remote.")
    return f"NDIF at {host}: {type(e).__name__}: {_one_line(str(e))}"


def decompose_remote(nn_model, input_ids: torch.Tensor, *, remote: bool = True, top_k: int = 5,
                     groups=None, host: str | None = None, timeout: float | None = None,
                     info: dict | None = None) -> dict:
    """One traced pass with the decomposition inside it; only the summary is saved.

    remote=True sends it to NDIF at `host` (resolve_host); an API key ($NDIF_API_KEY) is
    needed for the public NDIF, and only if the server asks for one elsewhere. `timeout`:
    seconds without a word from the server before giving up. `info`, if given, receives
    the wire sizes and the client-side time of each status (MeasuredBackend).
    """
    import nnsight

    if not remote:
        with nn_model.trace(input_ids):
            summary = nnsight.save(summarize_in_trace(nn_model, top_k, groups=groups))
        return summary

    host = resolve_host(host)
    key = os.environ.get("NDIF_API_KEY")
    if not key and host == PUBLIC_HOST:
        raise RemoteError("--remote needs an NDIF API key for api.ndif.us: set NDIF_API_KEY (from "
                          "your NDIF account page), aim --ndif-host at your own server, or run "
                          "locally without --remote.")
    timeout = float(timeout or os.environ.get("INFOFLOW_NDIF_TIMEOUT") or DEFAULT_TIMEOUT)
    for module in (arch, weights, engine, unembedding, trace):   # everything the in-trace code calls
        nnsight.register(module)
    local_model_key(nn_model)
    model_key = nn_model.to_model_key()
    config = nn_model.config   # here, outside the trace: see summarize_in_trace
    backend = None
    try:
        with _quiet_with_timeout(timeout):   # the backend reads the display setting when made
            backend = _backend_class()(model_key, host=host, api_key=key, silence=timeout,
                                       env=nn_model._remoteable_get_env())
            with nn_model.trace(input_ids, backend=backend):
                summary = nnsight.save(summarize_in_trace(nn_model, top_k, groups=groups,
                                                          config=config))
    except Exception as e:   # every failure past this point is the server's or the network's
        raise RemoteError(_explain(e, host, timeout, model_key)) from e
    if not isinstance(summary, dict) or "norm" not in summary:
        raise RemoteError(f"NDIF at {host} completed the request but sent back no summary.")
    if info is not None:
        info.update(backend.wire, meta=backend.meta, model_key=model_key)
    return summary

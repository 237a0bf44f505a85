"""A decomposition that displays itself (issue 28): the prompt page's viewer, inline in a
notebook, or as one self-contained HTML file.

The page (site_src/templates/notebook.html) carries everything: the viewer's ES modules
(site_src/static/js, zlib-compressed JSON, base64), the result as a data file (msgpack, base64,
docs/data-format.md) and, where it fits, the per-head data. Its classic loader script
(embed-loader.js) turns the modules into blob: URLs and imports embed.js, which decodes the data
and mounts the viewer. Nothing is fetched from anywhere, so the output needs no server, no
kernel extension and no network, and survives saving, reopening and nbconvert's HTML export.

In a notebook the page goes into an <iframe srcdoc> sandboxed to scripts only (an opaque
origin: the viewer cannot reach the notebook, its cookies or its storage). The page's own CSP
allows its loader by hash, its style by hash, blob: modules and nothing else, so a hostile
prompt (it is in the data, base64, and shown with textContent) runs nothing.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgpack

from . import __version__
from .result import Decomposition

STATIC = Path(__file__).resolve().parent.parent / "site_src" / "static"
ENTRY = "js/embed.js"
LOADER = "js/embed-loader.js"
EXTRA_CSS = """
.page-embed #content { padding: 0 12px; }
.embed-head { display: flex; gap: 12px; align-items: flex-start; justify-content: space-between; }
.embed-head .prompt-text { margin: 8px 0 0; }
.embed-note { color: var(--muted); margin: 4px 0; }
.page-embed .site-footer { padding: 4px 12px; }
"""

# The largest notebook output made by default, in bytes of HTML (the iframe and its page). With
# the default model (README, "In a notebook"; show(d, max_bytes=10**9).sizes["output"] and
# show(d, heads=False, ...) on a prompt of P tokens) the output is
#   P = 16:  0.17 MB without the per-head data, 0.38 MB with it
#   P = 64:  0.59 MB without, 2.4 MB with
#   P = 128: 1.5 MB without, 7.1 MB with
# so per-head data goes in only while the whole stays under the limit, and past it without
# heads (P ≈ 150 on the default model) the output is a note saying how to see the result:
# save_html, show(max_bytes=...), or a site. 2 MB stays under what a Jupyter server passes in
# one go (iopub_data_rate_limit, 1 MB/s over a 3 s window).
MAX_INLINE_BYTES = 2_000_000
DEFAULT_HEIGHT = 760
METRICS = ("norm", "delta", "proj")


class ViewError(ValueError):
    """A view option names something this result does not have; the message says what to give."""


# ----------------------------------------------------------------------------- the modules


_IMPORT = re.compile(r"""^(\s*(?:import|export)\b[^;]*?\bfrom\s*|\s*import\s*)(["'])(\.{1,2}/[^"']+)\2""", re.M)


def _module_graph(entry: str = ENTRY, static: Path = STATIC) -> list[tuple[str, str]]:
    """[(name, source)] of entry and every module it imports statically, entry last, each
    relative import rewritten to the bare specifier "infoflow-module/<name>", which the page's
    import map sends to that module's blob: URL (modules may import each other in a cycle, as
    grid.js and grid-overlay.js do). Dynamic import()s are left alone: the viewer uses them only
    on the live page and the gallery."""
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = static / name
        source = path.read_text(encoding="utf-8")
        deps = []

        def rewrite(m: re.Match) -> str:
            dep = (path.parent / m.group(3)).resolve().relative_to(static.resolve()).as_posix()
            deps.append(dep)
            return f"{m.group(1)}{m.group(2)}infoflow-module/{dep}{m.group(2)}"

        source = _IMPORT.sub(rewrite, source)
        source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.M)
        for dep in deps:
            visit(dep)
        order.append((name, source))

    visit(entry)
    return order


_cache: dict[str, object] = {}


def _assets() -> dict:
    """The page's fixed parts (modules, loader, style, CSP), made once per process."""
    if "assets" not in _cache:
        modules = json.dumps(_module_graph(), ensure_ascii=True, separators=(",", ":"))
        loader = (STATIC / LOADER).read_text(encoding="utf-8")
        style = (STATIC / "css" / "site.css").read_text(encoding="utf-8") + EXTRA_CSS
        assert "</" not in loader and "</" not in style, "inline script and style must not close their element"

        def sha(text: str) -> str:
            return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

        # the loader by its hash; the import map it writes by the page's nonce; modules from blob:
        csp = (f"default-src 'none'; script-src {sha(loader)} 'nonce-{{nonce}}' blob:; style-src {sha(style)}; "
               "img-src data: blob:; object-src 'none'; base-uri 'none'; form-action 'none'")
        _cache["assets"] = {"modules": base64.b64encode(zlib.compress(modules.encode(), 9)).decode(),
                            "loader": loader, "style": style, "csp": csp}
    return _cache["assets"]


# ----------------------------------------------------------------------------- the data


def _variants(d) -> dict[str, Decomposition]:
    """A Decomposition, or {name: Decomposition} of one prompt (decompose_variants)."""
    if isinstance(d, Decomposition):
        return {{"tokens": "tokens", "words": "words"}.get(d.grouping, "groups"): d}
    if isinstance(d, dict) and d and all(isinstance(v, Decomposition) for v in d.values()):
        return dict(d)
    raise ViewError(f"show() takes a Decomposition (infoflow.decompose) or a dict of them, not {type(d).__name__}.")


def _prompt(d: Decomposition) -> dict:
    title = " ".join(d.prompt.split())
    return {"id": "notebook", "title": title[:80] + ("…" if len(title) > 80 else ""), "text": d.prompt,
            "tags": [], "note": None, "chat": False}


def _encode(variants: dict[str, Decomposition], heads: bool) -> tuple[bytes, bytes | None]:
    """(main data file bytes, per-head file bytes or None)."""
    from .datafile import encode, heads_document
    base = next(iter(variants.values()))
    main = encode(variants, _prompt(base), any_first=True)
    if not heads or base.heads is None:
        return main, None
    return main, msgpack.packb(heads_document(variants), use_bin_type=True)


# ----------------------------------------------------------------------------- the view


def _trace_key(d: Decomposition, trace) -> int | str | None:
    """The viewer's key of the traced source: a token position, or "b" for the bias source."""
    if trace is None:
        return None
    P = d.n_tokens
    if isinstance(trace, bool) or not isinstance(trace, (int, str)):
        raise ViewError(f"trace must be a token (str) or a position (int), not {type(trace).__name__}.")
    if isinstance(trace, int):
        if not -P <= trace < P:
            raise ViewError(f"trace={trace} is out of range: the prompt has {P} tokens (0 .. {P - 1}).")
        return trace % P
    if trace == "bias" and d.has_bias:
        return "b"
    for match in (lambda t: t == trace, lambda t: t.strip() == trace.strip()):
        hits = [p for p, t in enumerate(d.tokens) if match(t)]
        if hits:
            return hits[0]
    shown = ", ".join(repr(t) for t in d.tokens[:40]) + (" …" if P > 40 else "")
    raise ViewError(f"trace={trace!r} is not a token of this prompt. Give one of {shown}, or a position.")


def view_hash(d: Decomposition, *, metric: str = "norm", trace=None, grouping: str | None = None,
              heat: bool = False, pin: tuple[int, int, int] | None = None) -> str:
    """The viewer's URL hash (site_src/static/js/state.js) for a view of d."""
    if metric not in METRICS:
        raise ViewError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.")
    q = [f"m={metric}"]
    if grouping is not None:
        q.append(f"g={quote(grouping)}")
    key = _trace_key(d, trace)
    if key is not None:
        q.append(f"t={key}")
    if heat:
        q.append("heat=1")
    if pin is not None:
        l, k, p = (int(x) for x in pin)
        q.append(f"pin={l}.{k}.{p}")
    return "#" + "&".join(q)


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data).decode() if data else ""


def page(d, *, view: str = "", theme: str = "auto", heads: bool = True, note: str = "",
         encoded: tuple[bytes, bytes | None] | None = None) -> str:
    """The self-contained page of d's viewer (what save_html writes, and a notebook's iframe holds)."""
    from .site import environment
    variants = _variants(d)
    base = next(iter(variants.values()))
    main, head_bytes = encoded or _encode(variants, heads)
    a = _assets()
    nonce = secrets.token_urlsafe(18)            # a new one per page: allows its import map only
    heads_note = "" if head_bytes else note or (
        "This result has no per-head data: it was decomposed with heads=False, or shown with heads=False.")
    return environment().get_template("notebook.html").render(
        theme=theme, csp=a["csp"].replace("{nonce}", nonce), nonce=nonce, version=__version__, title=_prompt(base)["title"], style=a["style"],
        view=view, file_id="infoflow", heads_note=heads_note, text=base.prompt, note=note,
        model_id=base.model.get("id", "?"), fingerprint=base.model.get("fingerprint", "?"),
        modules=a["modules"], data=_b64(main), heads=_b64(head_bytes), loader=a["loader"])


# An iframe's content is never shown where iframes work; where a front end's sanitizer drops
# the iframe tag (JupyterLab, for a notebook it does not trust) this text is what remains.
HIDDEN = ("[infoflow: the viewer is hidden because this front end does not trust this notebook's HTML. "
          "Run the cell again, or trust the notebook (JupyterLab: command palette, \u201cTrust Notebook\u201d), "
          "or save it with d.save_html(\"fig.html\") and open that file.]")


def _iframe(doc: str, height: int, title: str) -> str:
    # sandbox: scripts only, an opaque origin; downloads for the viewer's PNG / SVG / CSV buttons
    return (f'<iframe class="infoflow-view" sandbox="allow-scripts allow-downloads" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #8884;border-radius:4px" '
            f'title="{html.escape(title, quote=True)}" srcdoc="{html.escape(doc, quote=True)}">'
            f'{html.escape(HIDDEN)}</iframe>')


def _too_big(total: int, limit: int) -> str:
    return (f'<div class="infoflow-too-big" style="font-family:sans-serif;padding:8px;border:1px solid #8884">'
            f'<strong>infoflow:</strong> this result needs {total / 1e6:.1f} MB of notebook output, over the '
            f'limit of {limit / 1e6:.1f} MB that keeps notebooks quick to open. To see it: '
            f'<code>d.save_html("fig.html")</code> writes it to one file to open in a browser; or '
            f'<code>infoflow.show(d, max_bytes={int(total * 1.05)})</code> embeds it anyway; or '
            f'build a site (<code>infoflow build</code>, README).</div>')


@dataclass
class View:
    """What `show` returns: displays itself in a notebook (the last expression of a cell, or
    IPython.display.display(view)), and `save_html(path)` writes the same view to a file."""
    html: str                      # the notebook output: an iframe, or the note when too big
    sizes: dict                    # bytes: data, heads (embedded), heads_left_out, output
    _page: object                  # () -> the self-contained page, for save_html

    def _repr_html_(self) -> str:
        return self.html

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/html": self.html,
                "text/plain": f"<infoflow view: {self.sizes['output'] / 1e6:.2f} MB of HTML>"}

    def save_html(self, path) -> Path:
        return _write(path, self._page())


def show(d, *, metric: str = "norm", trace=None, grouping: str | None = None, heat: bool = False,
         pin=None, height: int = DEFAULT_HEIGHT, theme: str = "auto", heads: bool = True,
         max_bytes: int = MAX_INLINE_BYTES) -> View:
    """The viewer of a decomposition, inline in a notebook, opened on a view.

    metric: "norm", "delta" or "proj"; trace: a token (" Mary": the first position holding it,
    exactly or up to surrounding spaces), a position, or "bias";
    grouping: a variant name ("tokens", "words"); pin: (layer, 0 attn / 1 mlp, position);
    theme: "auto" (the browser's), "light" or "dark"; heads: embed the per-head data where it
    fits in max_bytes (bytes of notebook output; past it the output says how to see the result).
    """
    if theme not in ("auto", "light", "dark"):
        raise ViewError(f"theme must be 'auto', 'light' or 'dark', not {theme!r}.")
    variants = _variants(d)
    base = next(iter(variants.values()))
    view = view_hash(base, metric=metric, trace=trace, grouping=grouping, heat=heat, pin=pin)
    main, head_bytes = _encode(variants, heads)
    title = f"infoflow: {_prompt(base)['title']}"

    def render(hb, note=""):
        return _iframe(page(variants, view=view, theme=theme, note=note, encoded=(main, hb)), height, title)

    def size(text: str) -> int:
        return len(text.encode("utf-8"))

    out, note, left_out = render(head_bytes), "", 0
    if size(out) > max_bytes and head_bytes:
        left_out = len(head_bytes)
        note = (f"Per-head views are left out of this notebook output ({left_out / 1e6:.1f} MB more than its "
                f"limit allows): d.save_html(\"fig.html\") keeps them.")
        out = render(None, note)
    if size(out) > max_bytes:
        out = _too_big(size(out), max_bytes)
    sizes = {"data": len(main), "heads": 0 if left_out else len(head_bytes or b""), "heads_left_out": left_out,
             "output": size(out)}
    return View(html=out, sizes=sizes,
                _page=lambda: page(variants, view=view, theme=theme, encoded=(main, head_bytes)))


# ----------------------------------------------------------------------------- files

MARK = '<meta name="generator" content="infoflow '


def _write(path, text: str) -> Path:
    """Write a page; a file already there is replaced only if infoflow wrote it."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ViewError(f"save_html writes an HTML file: give a name ending in .html, not {path.name!r}.")
    if path.exists():
        try:
            ours = MARK in path.read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            ours = False
        if not ours:
            raise ViewError(f"{path} exists and infoflow did not write it: choose another name, or remove it first.")
    path.write_text(text, encoding="utf-8")
    return path


def save_html(d, path, **view_options) -> Path:
    """Write d's viewer as one self-contained HTML file (everything embedded, per-head data
    included), opened on the view that show()'s options describe."""
    heads = view_options.pop("heads", True)
    theme = view_options.pop("theme", "auto")
    variants = _variants(d)
    view = view_hash(next(iter(variants.values())), **view_options)
    return _write(path, page(variants, view=view, theme=theme, heads=heads))

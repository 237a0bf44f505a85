"""Step 5 of the pipeline: render pages with Jinja2, copy static files, draw thumbnails."""
from __future__ import annotations

import re
import shutil
import struct
import zlib
from pathlib import Path

import jinja2
import numpy as np

SITE_SRC = Path(__file__).resolve().parent.parent / "site_src"


def environment(src: Path = SITE_SRC) -> jinja2.Environment:
    # Autoescape on for every template, whatever its name: prompts are untrusted text.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(src / "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_site(out: Path, entries: list[dict], site: dict, src: Path = SITE_SRC, example: dict | None = None) -> None:
    """Write index.html, about.html (the method, with `example`: about.py worked_example),
    p/<id>.html, c/<id>.html (compare the models) and static/ into `out` (data files are already there)."""
    env = environment(src)
    (out / "about.html").write_text(env.get_template("about.html").render(
        root="", site=site, example=example), encoding="utf-8")
    tags = sorted({t for e in entries for t in e["tags"]})
    (out / "index.html").write_text(env.get_template("index.html").render(
        root="", site=site, prompts=entries, tags=tags), encoding="utf-8")
    (out / "p").mkdir(exist_ok=True)
    page = env.get_template("prompt.html")
    for i, e in enumerate(entries):
        (out / "p" / f"{e['id']}.html").write_text(page.render(
            root="../", site=site, prompt=e, prev=entries[i - 1] if i else None,
            next=entries[i + 1] if i + 1 < len(entries) else None), encoding="utf-8")
    compare = env.get_template("compare.html")
    for e in entries:
        if e.get("compare"):
            (out / "c").mkdir(exist_ok=True)
            (out / e["compare"]).write_text(compare.render(root="../", site=site, prompt=e), encoding="utf-8")
    shutil.copytree(src / "static", out / "static", dirs_exist_ok=True)
    (out / ".nojekyll").write_text("")


def render_live(out: Path, site: dict, *, manifest: str, total_mb: float, config: dict,
                has_chat: bool, src: Path = SITE_SRC, model_key: str | None = None) -> None:
    """Write live/index.html: the page that decomposes a visitor's prompt in their browser. Its
    footer credits only the model it runs (`model_key`), not every model of the gallery."""
    (out / "live").mkdir(exist_ok=True)
    (out / "live" / "index.html").write_text(environment(src).get_template("live.html").render(
        root="../", site=site, manifest=manifest, total_mb=total_mb, config=config,
        has_chat=has_chat, credit_keys=[model_key] if model_key else []), encoding="utf-8")


# ----------------------------------------------------------------------------- thumbnails


def palette(src: Path = SITE_SRC) -> list[tuple[int, int, int]]:
    """The viewer's source colours, read from palette.js so both agree."""
    path = src / "static" / "js" / "palette.js"
    text = path.read_text() if path.exists() else ""
    m = re.search(r"PALETTE\s*=\s*\[(.*?)\]", text, re.S)
    hexes = re.findall(r"#([0-9a-fA-F]{6})", m.group(1) if m else "") or ["4477aa", "ee6677", "228833"]
    return [tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in hexes]


def thumbnail_png(norm: np.ndarray, colours: list[tuple[int, int, int]], width: int = 256) -> bytes:
    """A miniature of the viewer's grid: every cell a stacked bar of source shares, largest
    first, position 0 left out as in the viewer; the last MLP on top.

    norm: (L, 2, P, G) cumulative norms.
    """
    L, _, P, G = norm.shape
    n = norm.reshape(2 * L, P, G)[::-1].astype(np.float64)
    n[..., 0] = 0.0
    total = n.sum(-1, keepdims=True)
    share = np.divide(n, total, out=np.zeros_like(n), where=total > 0)
    order = np.argsort(-share, axis=-1)                                   # largest first
    cum = np.cumsum(np.take_along_axis(share, order, -1), axis=-1)        # (2L, P, G)
    cell = max(2, min(12, width // max(P, 1)))
    centres = (np.arange(cell) + 0.5) / cell
    rank = (cum[..., None, :] < centres[:, None]).sum(-1).clip(max=G - 1)  # (2L, P, cell)
    source = np.take_along_axis(order, rank, -1)
    rgb = np.array(colours, dtype=np.uint8)[source % len(colours)]         # (2L, P, cell, 3)
    rgb[(total[..., 0] == 0)] = 235                                        # nothing to show
    img = rgb.reshape(2 * L, P * cell, 3)
    if cell > 3:
        img[:, cell - 1::cell] = 255                                       # a gap between columns
    return _png(img.repeat(2, axis=0))


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

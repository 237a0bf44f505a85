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


def render_site(out: Path, entries: list[dict], site: dict, src: Path = SITE_SRC) -> None:
    """Write index.html, p/<id>.html and static/ into `out` (data files are already there)."""
    env = environment(src)
    tags = sorted({t for e in entries for t in e["tags"]})
    (out / "index.html").write_text(env.get_template("index.html").render(
        root="", site=site, prompts=entries, tags=tags), encoding="utf-8")
    (out / "p").mkdir(exist_ok=True)
    page = env.get_template("prompt.html")
    for i, e in enumerate(entries):
        (out / "p" / f"{e['id']}.html").write_text(page.render(
            root="../", site=site, prompt=e, prev=entries[i - 1] if i else None,
            next=entries[i + 1] if i + 1 < len(entries) else None), encoding="utf-8")
    shutil.copytree(src / "static", out / "static", dirs_exist_ok=True)
    (out / ".nojekyll").write_text("")


# ----------------------------------------------------------------------------- thumbnails


def palette(src: Path = SITE_SRC) -> list[tuple[int, int, int]]:
    """The viewer's source colours, read from palette.js so both agree."""
    path = src / "static" / "js" / "palette.js"
    text = path.read_text() if path.exists() else ""
    m = re.search(r"PALETTE\s*=\s*\[(.*?)\]", text, re.S)
    hexes = re.findall(r"#([0-9a-fA-F]{6})", m.group(1) if m else "") or ["4477aa", "ee6677", "228833"]
    return [tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in hexes]


def thumbnail_png(norm: np.ndarray, colours: list[tuple[int, int, int]], cell: int = 3) -> bytes:
    """A small picture of the grid: each cell takes the colour of its largest source
    (position 0 left out, as in the viewer), faded by how much that source dominates.

    norm: (L, 2, P, G) cumulative norms.  Rows run top = last MLP, like the viewer.
    """
    L, _, P, G = norm.shape
    n = norm.reshape(2 * L, P, G)[::-1].copy()
    n[..., 0] = 0.0
    total = n.sum(-1)
    top = n.argmax(-1)
    share = np.where(total > 0, n.max(-1) / np.where(total > 0, total, 1), 0.0)
    rgb = np.array(colours, dtype=np.float64)[top % len(colours)]          # (2L, P, 3)
    alpha = (0.25 + 0.75 * share)[..., None]
    img = (255 - alpha * (255 - rgb)).astype(np.uint8)
    img = img.repeat(cell, 0).repeat(cell, 1)
    return _png(img)


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

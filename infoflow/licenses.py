"""Licence terms of the models a site was computed with, copied into the site as plain text.

Gemma 3 270M comes under the Gemma Terms of Use, which its package ships as a saved web page.
A site must not load anything from other hosts nor run scripts it did not write, so the page
is not copied as is: its article text is extracted (stdlib HTMLParser, no markup kept) into
`licenses/<model>-terms.txt`, headed by the credit line and the terms' address.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from .model import OFFLINE_MODELS, terms_file

_BLOCKS = {"p", "h1", "h2", "h3", "h4", "li", "br", "div", "tr"}


class _ArticleText(HTMLParser):
    """Text inside the first <div class="devsite-article-body ...">, scripts and styles dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth, self.skip, self.out = 0, 0, []

    def handle_starttag(self, tag, attrs):
        if not self.depth:
            if tag == "div" and "devsite-article-body" in (dict(attrs).get("class") or ""):
                self.depth = 1
            return
        self.depth += 1
        self.skip += tag in ("script", "style")
        if tag in _BLOCKS:
            self.out.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1
            self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.out.append(data)


def terms_text(html: str) -> str:
    """The terms' text from the saved page; '' if the page has no article body."""
    parser = _ArticleText()
    parser.feed(html)
    text = "".join(parser.out).replace("\r", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
    return re.sub(r"\s*Send feedback$", "", text)


def write_licenses(site: Path, models: list[dict]) -> None:
    """For each model with shipped terms: licenses/<id>-terms.txt, and model["terms"] set to it."""
    for info in models:
        m = OFFLINE_MODELS.get(info.get("id"))
        path = terms_file(info.get("id", ""))
        if m is None or path is None:
            continue
        body = terms_text(path.read_text(encoding="utf-8", errors="replace"))
        if not body:
            raise ValueError(f"{path} holds no terms text; reinstall with: {m.pip}")
        rel = f"licenses/{m.name}-terms.txt"
        (site / "licenses").mkdir(exist_ok=True)
        (site / rel).write_text(f"{m.credit}: {m.terms_url}\n"
                                f"(text of the copy shipped in the {m.package} package)\n\n{body}\n",
                                encoding="utf-8")
        info["terms"] = rel

"""The curated prompt list: a TOML file of [[prompt]] tables, validated with clear errors."""
from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write

RESERVED_IDS = {"index", "static", "data", "thumbs", "p"}
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class PromptError(ValueError):
    """A prompts file is invalid; the message names the file, the entry and the fix."""


@dataclass
class Prompt:
    id: str
    title: str
    text: str
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    notes: dict[str, str] = field(default_factory=dict)   # model key -> that model's note
    groups: list[str] = field(default_factory=list)   # text spans, each one declared group
    chat: bool = False
    line: int | None = None
    target: str | None = None        # the graph's target token (one token on every model)
    contrast: str | None = None      # ... and the token it is measured against
    targets: dict[str, str] = field(default_factory=dict)     # per-model overrides, by model name
    contrasts: dict[str, str] = field(default_factory=dict)

    def graph_target(self, model: str | None) -> tuple[str | None, str | None]:
        """(target, contrast) declared for `model` (its name or URL slug): a per-model
        override, else the prompt's own."""
        from .gallery_models import model_slug
        names = {model, model_slug(model)} if model else set()
        pick = lambda over, default: next((over[n] for n in names if n in over), default)  # noqa: E731
        return pick(self.targets, self.target), pick(self.contrasts, self.contrast)

    def meta(self) -> dict:
        return {"id": self.id, "title": self.title, "text": self.text, "tags": list(self.tags),
                "note": self.note, "chat": self.chat}


FIELDS = {"id": str, "title": str, "text": str, "tags": list, "note": str, "notes": dict, "groups": list,
          "chat": bool, "target": str, "contrast": str, "targets": dict, "contrasts": dict}
REQUIRED = ("id", "title", "text")


# A [[prompt]] header as TOML allows it: spaces inside the brackets, a comment after it.
_HEADER = re.compile(r"^\s*\[\[\s*(prompt|\"prompt\"|'prompt')\s*\]\]\s*(#.*)?$")


def _entry_lines(source: str) -> list[int]:
    """1-based line of each [[prompt]] header, in order (TOML counts only \\n as a line end)."""
    return [i + 1 for i, line in enumerate(source.split("\n")) if _HEADER.match(line)]


def load_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8-sig")          # a UTF-8 BOM is fine
    except FileNotFoundError:
        raise PromptError(f"{path}: no such prompts file. Create it, or add a prompt with "
                          f"`infoflow add \"text\" --title ... --prompts {path}`.")
    except UnicodeDecodeError as e:
        line = source_line_of(path.read_bytes(), e.start)
        raise PromptError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line} cannot be "
                          "decoded). Save the file as UTF-8.")
    except IsADirectoryError:
        raise PromptError(f"{path}: is a folder; --prompts takes a TOML file.")
    prompts = parse_prompts(source, str(path))
    if not prompts:
        raise PromptError(f"{path}: has no prompts (no [[prompt]] table). Add one with "
                          f"`infoflow add \"text\" --prompts {path}`, or write a [[prompt]] table with "
                          "id, title and text (see README.md).")
    return prompts


def source_line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def parse_prompts(source: str, name: str = "<prompts>") -> list[Prompt]:
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise PromptError(f"{name}: malformed TOML: {e}. Fix the syntax at that line.") from e
    entries = doc.get("prompt", [])
    unknown = set(doc) - {"prompt", "models"}
    if unknown:
        raise PromptError(f"{name}: unknown top-level key(s) {sorted(unknown)}; "
                          "every prompt is a [[prompt]] table (and `models = [...]` names the gallery's models).")
    _check_models(doc.get("models", []), name)
    if not isinstance(entries, list):
        raise PromptError(f"{name}: `prompt` must be an array of tables: write each entry as [[prompt]].")
    lines = _entry_lines(source)
    prompts, seen_ids, seen_texts = [], {}, {}
    for i, entry in enumerate(entries):
        line = lines[i] if i < len(lines) else None
        where = f"{name}, entry {i + 1}" + (f" (line {line})" if line else "")
        prompts.append(_validate(entry, where, line))
        p = prompts[-1]
        if p.id in seen_ids:
            raise PromptError(f"{where}: duplicate id {p.id!r} (also entry {seen_ids[p.id]}). "
                              "Give each prompt a unique id.")
        seen_ids[p.id] = i + 1
        key = (p.text, p.chat)
        if key in seen_texts:
            raise PromptError(f"{where}: the same text as entry {seen_texts[key]}. Remove one of them.")
        seen_texts[key] = i + 1
    return prompts


def _check_models(models, name: str) -> None:
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise PromptError(f"{name}: `models` must be a list of model names, e.g. "
                          'models = ["SmolLM2-135M-Instruct", "gemma3-270m"].')


def load_models(path: str | Path) -> tuple[str, ...]:
    """The `models = [...]` a prompts file names (validated), or () when it names none."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ()                      # load_prompts says what is wrong with the file
    _check_models(doc.get("models", []), str(path))
    return tuple(m.strip() for m in doc.get("models", []))


def _validate(entry, where: str, line: int | None) -> Prompt:
    if not isinstance(entry, dict):
        raise PromptError(f"{where}: expected a table of fields, got {type(entry).__name__}.")
    for key in REQUIRED:
        if key not in entry:
            raise PromptError(f"{where}: missing field `{key}`. Add `{key} = \"...\"`.")
    for key, value in entry.items():
        if key not in FIELDS:
            raise PromptError(f"{where}: unknown field `{key}`; allowed: {', '.join(FIELDS)}.")
        want = FIELDS[key]
        if not isinstance(value, want):
            raise PromptError(f"{where}: `{key}` must be a {want.__name__}, not {type(value).__name__} "
                              f"({value!r}).")
        if want is list and not all(isinstance(x, str) for x in value):
            raise PromptError(f"{where}: `{key}` must be a list of strings.")
        if key == "notes" and not all(isinstance(x, str) for x in value.values()):
            raise PromptError(f"{where}: `{key}` must map model names to notes, e.g. "
                              'notes = { gemma3-270m = "..." } (beside `note`, the default).')
        if key in ("targets", "contrasts") and not all(isinstance(v, str) and v for v in value.values()):
            raise PromptError(f"{where}: `{key}` maps model names to one-token strings, e.g. "
                              f'{key} = {{ gemma3-270m = " m" }}.')
        if key in ("target", "contrast") and not value:
            raise PromptError(f"{where}: `{key}` is empty; give one token, e.g. {key} = \" Mary\".")
    if not entry["text"].strip():
        raise PromptError(f"{where}: `text` is empty. Give the prompt some text, or remove the entry.")
    if not entry["title"].strip():
        raise PromptError(f"{where}: `title` is empty.")
    pid = entry["id"]
    if not SLUG.fullmatch(pid) or pid in RESERVED_IDS:
        raise PromptError(f"{where}: id {pid!r} must be a URL slug: lowercase letters, digits and '-', "
                          f"at most 64 characters, not one of {sorted(RESERVED_IDS)}. "
                          f"Try {slugify(pid or entry['title'])!r}.")
    for span in entry.get("groups", []):
        if span not in entry["text"]:
            raise PromptError(f"{where}: group {span!r} does not occur in the text; each group is a "
                              "piece of the prompt text.")
    return Prompt(id=pid, title=entry["title"], text=entry["text"], tags=list(entry.get("tags", [])),
                  note=entry.get("note"), notes=dict(entry.get("notes", {})), groups=list(entry.get("groups", [])),
                  chat=bool(entry.get("chat", False)), line=line,
                  target=entry.get("target"), contrast=entry.get("contrast"),
                  targets=dict(entry.get("targets", {})), contrasts=dict(entry.get("contrasts", {})))


def slugify(text: str, taken: set[str] | frozenset = frozenset()) -> str:
    """A URL-safe, stable slug from text, made unique against `taken` with -2, -3, ..."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    base = "-".join(words)[:48].strip("-") or "prompt"
    if base in RESERVED_IDS or not base[0].isalnum():
        base = f"prompt-{base}"
    slug, n = base, 2
    while slug in taken:
        slug = f"{base}-{n}"
        n += 1
    return slug


def span_groups(tokens: list[str], text_in_model: str, spans: list[str]) -> list[int] | None:
    """Group ids per token for declared text spans: a token overlapping a span joins its group.

    Returns None when the tokens cannot be lined up with the text.
    """
    joined = "".join(tokens)
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t)
    offset = joined.find(text_in_model)
    if offset < 0:
        return None
    labels = list(range(len(tokens)))
    next_label = len(tokens)
    for span in spans:
        at = text_in_model.find(span)
        if at < 0:
            return None
        lo, hi = offset + at, offset + at + len(span)
        members = [i for i, (s, t) in enumerate(zip(starts, tokens)) if s < hi and s + len(t) > lo]
        for i in members:
            labels[i] = next_label
        next_label += 1
    return labels


def add_prompt(path: str | Path, *, text: str, title: str, tags: list[str], note: str | None = None,
               pid: str | None = None, chat: bool = False) -> Prompt:
    """Append one [[prompt]] to `path` (created if missing), keeping comments and formatting."""
    import tomlkit

    path = Path(path)
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o200):
        raise PromptError(f"{path} is read-only; make it writable (chmod u+w {path}) to add a prompt to it.")
    raw = path.read_bytes() if path.exists() else (
        b"# infoflow prompts: one [[prompt]] table each (see README.md).\n")
    bom = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""
    try:
        source = raw[len(bom):].decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text (line {source_line_of(raw, e.start + len(bom))}); "
                          "save it as UTF-8 before adding to it.")
    existing = parse_prompts(source, str(path)) if source.strip() else []
    ids = {p.id for p in existing}
    if pid is not None and pid in ids:
        raise PromptError(f"{path}: a prompt with id {pid!r} exists already; choose another --id.")
    for p in existing:
        if p.text == text and p.chat == chat:
            raise PromptError(f"{path}: prompt {p.id!r} has this text already.")
    pid = pid or slugify(title, ids)
    entry = {"id": pid, "title": title, "text": text, "tags": tags}
    if note:
        entry["note"] = note
    if chat:
        entry["chat"] = True
    new = _validate(entry, f"{path}, new entry", None)

    # Append the new table as text: the file's own bytes, comments and layout stay as they are.
    table = tomlkit.table()
    for key, value in entry.items():
        table.add(key, value)
    aot = tomlkit.aot()
    aot.append(table)
    addition = tomlkit.document()
    addition.append("prompt", aot)
    text_out = (source.rstrip("\n") + "\n\n" if source.strip() else source) + tomlkit.dumps(addition)
    parse_prompts(text_out, str(path))          # never write a file we could not read back
    try:
        atomic_write(path, bom + text_out.encode("utf-8"))     # keeps the file's mode and BOM
    except OSError as e:
        raise PromptError(f"could not write {e.filename or path}: {e.strerror or e}; the prompts file is "
                          "unchanged. Add to a file in a writable folder (--prompts).") from e
    return new

"""Token display strings and the "words" grouping."""
from __future__ import annotations

import re
import unicodedata

_MARKERS = re.compile(r"(?:<0x[0-9A-F]{2}>)+")


def display_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Readable text of each token: leading spaces kept, partial UTF-8 bytes shown as <0xNN>."""
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i, piece in zip(ids, pieces):
        text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if "\ufffd" in text:
            text = _bytes_of_piece(piece)
        elif isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text  # SentencePiece drops the word-start space when decoding one piece
        out.append(text)
    return out


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level BPE maps every byte to a printable character; invert that map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()


def _bytes_of_piece(piece: str) -> str:
    if piece.startswith("<0x") and piece.endswith(">"):
        return piece  # SentencePiece byte fallback is already readable
    if all(ch in _BYTES for ch in piece):
        raw = bytes(_BYTES[ch] for ch in piece)
        text = raw.decode("utf-8", errors="ignore")
        if text and len(text.encode()) == len(raw):
            return text
        return "".join(f"<0x{b:02X}>" for b in raw)
    return piece


def _starts_word(text: str) -> bool:
    if not text:
        return True
    ch = text[0]
    return ch.isspace() or ch.isdigit() or unicodedata.category(ch).startswith(("P", "S"))


def marker_bytes(text: str) -> bytes | None:
    """The bytes of a token shown as <0xNN> markers only (a piece of a UTF-8 character), else None."""
    if not _MARKERS.fullmatch(text):
        return None
    return bytes(int(text[i + 3:i + 5], 16) for i in range(0, len(text), 6))


def utf8_owed(raw: bytes, owed: int) -> int:
    """Continuation bytes a UTF-8 character still needs after `raw`, `owed` being needed before it."""
    for b in raw:
        if owed and 0x80 <= b <= 0xBF:
            owed -= 1
        else:
            owed = 3 if b >= 0xF0 else 2 if b >= 0xE0 else 1 if b >= 0xC0 else 0
    return owed


def word_groups(tokens: list[str], special: list[bool]) -> list[int]:
    """Group id per token: a sub-word piece joins the word before it.

    A token starts a new group when it is special (BOS), follows a special token or a
    token that ends in whitespace, or begins with whitespace, punctuation, a symbol or a
    digit. Everything else is a continuation piece. A token that continues a character
    another token began (byte pieces, <0xNN>) always joins that token's group.
    """
    groups, g, owed = [], -1, 0
    for i, text in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        raw = marker_bytes(text)
        continues = owed > 0 and raw is not None and 0x80 <= raw[0] <= 0xBF
        new = not continues and (i == 0 or special[i] or special[i - 1] or _starts_word(text)
                                 or (prev[-1:].isspace()))
        if new:
            g += 1
        groups.append(g)
        owed = utf8_owed(raw, owed) if raw is not None else 0
    return groups

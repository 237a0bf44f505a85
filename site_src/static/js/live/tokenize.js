// The Python tokenizer's behaviour in the browser: ids, display strings, the words grouping.
//
// ids: @huggingface/tokenizers on the exported tokenizer.json (rewritten once at export so the
// GPT-2 split has Oniguruma's \s; docs/live-format.md). Display strings: a port of
// infoflow/tokens.py display_tokens. Words: infoflow/tokens.py word_groups, with Python's
// character classes (str.isspace, str.isdigit, unicodedata categories P*/S*) shipped as
// code-point ranges in the manifest, so both sides use the same Unicode tables.
import { Tokenizer } from "../../vendor/tokenizers/dist/tokenizers.min.mjs";
import { Template } from "../../vendor/jinja/dist/index.js";

// GPT-2's byte-level alphabet: every byte as a printable character (tokens.py _byte_decoder).
function byteDecoder() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const m = new Map();
  bs.forEach((b, i) => m.set(String.fromCodePoint(cs[i]), b));
  return m;
}
const BYTES = byteDecoder();
const STRICT = new TextDecoder("utf-8", { fatal: true });
const LOSSY = new TextDecoder("utf-8");

/** Binary search in sorted inclusive [lo, hi] code-point ranges. */
function inRanges(ranges, cp) {
  let a = 0, b = ranges.length - 1;
  while (a <= b) {
    const m = (a + b) >> 1;
    if (cp < ranges[m][0]) b = m - 1;
    else if (cp > ranges[m][1]) a = m + 1;
    else return true;
  }
  return false;
}

/**
 * The Rust BPE (tokenizers' BPE::merge_word), with no unk_token and no byte fallback, drops a
 * character that is not in the vocabulary *before* merging, so its neighbours can merge; the JS
 * library merges first and drops it after. This model's vocabulary lacks 21 of the 256
 * byte-level characters (bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2,
 * 0xF5..0xFF), so " \x1d|" is [" |"] in Python. We filter the same characters first.
 */
function skipUnknownBeforeMerging(model, config) {
  if (config.type !== "BPE" || config.unk_token != null || config.byte_fallback) return;
  const known = model.tokens_to_ids;
  const bpe = model.bpe.bind(model);
  model.bpe = (token) => {
    let clean = token;
    for (const ch of token) {
      if (!known.has(ch)) { clean = Array.from(token).filter((c) => known.has(c)).join(""); break; }
    }
    return bpe(clean);
  };
}

export class LiveTokenizer {
  /** tokenizerJson: the exported tokenizer.json; meta: the manifest's `tokenizer` map. */
  constructor(tokenizerJson, meta) {
    this.meta = meta;
    this.tok = new Tokenizer(tokenizerJson, { bos_token: meta.bos_token, eos_token: meta.eos_token });
    skipUnknownBeforeMerging(this.tok.model, tokenizerJson.model);
    this.special = new Set(meta.special_ids || []);
    this.added = new Map((tokenizerJson.added_tokens || []).map((t) => [t.id, t.content]));
    this.template = meta.chat_template ? new Template(meta.chat_template) : null;
    this.words = meta.words;
    this.shown = new Map();   // id -> display(id): the same for every prompt
  }

  get hasChat() { return !!this.template; }

  /** Token ids as Python's tokenize() gives them: tok(text), or the chat template then tokens. */
  encode(text, { chat = false } = {}) {
    if (chat) {
      if (!this.template) throw new Error("This model has no chat template.");
      const rendered = this.template.render({
        messages: [{ role: "user", content: text }], add_generation_prompt: true,
        bos_token: this.meta.bos_token, eos_token: this.meta.eos_token,
      });
      // transformers tokenizes a rendered template without adding special tokens again
      return this.tok.encode(rendered, { add_special_tokens: false }).ids;
    }
    return this.tok.encode(text).ids;
  }

  isSpecial(id) { return this.special.has(id); }

  /** tokens.py display_tokens: readable text, partial UTF-8 bytes as <0xNN>. */
  display(id) {
    let text = this.shown.get(id);
    if (text === undefined) this.shown.set(id, text = this.displayOnce(id));
    return text;
  }

  displayOnce(id) {
    const piece = this.tok.id_to_token(id);
    let text;
    if (this.added.has(id)) text = this.added.get(id);
    else text = this.decodePiece(piece, LOSSY);
    if (text.includes("\ufffd")) return this.bytesOfPiece(piece);
    if (typeof piece === "string" && piece.startsWith("\u2581") && !text.startsWith(" ")) return " " + text;
    return text;
  }

  displayTokens(ids) { return ids.map((i) => this.display(i)); }

  decodePiece(piece, decoder) {
    const raw = new Uint8Array([...piece].map((ch) => BYTES.get(ch)));
    return decoder.decode(raw);
  }

  bytesOfPiece(piece) {
    if (piece.startsWith("<0x") && piece.endsWith(">")) return piece;
    const chars = [...piece];
    if (!chars.every((ch) => BYTES.has(ch))) return piece;
    const raw = new Uint8Array(chars.map((ch) => BYTES.get(ch)));
    try {
      const text = STRICT.decode(raw);     // Python: decode(errors="ignore") kept every byte
      if (text) return text;
    } catch { /* not valid UTF-8 */ }
    return [...raw].map((b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`).join("");
  }

  /** tokens.py word_groups: a sub-word piece joins the word before it. */
  wordGroups(tokens, special) {
    const startsWord = (t) => !t.length || inRanges(this.words.word_start, t.codePointAt(0));
    const endsSpace = (t) => {
      const cps = [...t];                              // code points, as Python's str indexes
      return cps.length > 0 && inRanges(this.words.space, cps[cps.length - 1].codePointAt(0));
    };
    const groups = [];
    let g = -1, owed = 0;
    tokens.forEach((text, i) => {
      const prev = i ? tokens[i - 1] : "";
      const raw = markerBytes(text);                   // a piece of a UTF-8 character joins the piece before it
      const continues = owed > 0 && raw !== null && raw[0] >= 0x80 && raw[0] <= 0xbf;
      if (!continues && (i === 0 || special[i] || special[i - 1] || startsWord(text) || endsSpace(prev))) g++;
      groups.push(g);
      owed = raw !== null ? utf8Owed(raw, owed) : 0;
    });
    return groups;
  }
}

/** tokens.py marker_bytes: the bytes of a token made of <0xNN> markers only, else null. */
export function markerBytes(text) {
  if (!/^(?:<0x[0-9A-F]{2}>)+$/.test(text)) return null;
  const out = [];
  for (let i = 0; i < text.length; i += 6) out.push(parseInt(text.slice(i + 3, i + 5), 16));
  return out;
}

/** tokens.py utf8_owed: continuation bytes still needed after `raw`. */
export function utf8Owed(raw, owed) {
  for (const b of raw) {
    if (owed && b >= 0x80 && b <= 0xbf) owed--;
    else owed = b >= 0xf0 ? 3 : b >= 0xe0 ? 2 : b >= 0xc0 ? 1 : 0;
  }
  return owed;
}

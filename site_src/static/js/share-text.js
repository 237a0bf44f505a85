// What a share is a share of, in words, for every place that prints one (tooltip, caption,
// legend, trace chart, CSV header, figure caption). Issue 24: a share is of the whole residual
// unless the reader chose "of the sources shown", and then the hidden share is stated.
import { hiddenShare } from "./compute.js";
import { SHARE_OF } from "./state.js";
import { fmtPct } from "./format.js";

/** Labels of the hidden sources (the traced one is shown), joined for a sentence. */
export function hiddenNames(v) {
  const names = [];
  for (let s = 0; s < v.V.G; s++) if (v.hidden[s]) names.push(v.labels[s]);
  return names.join(" ");
}

/** The mode's name: "share of the whole residual" or "share of the sources shown". */
export const shareOf = (v) => SHARE_OF[v.state.shown ? "shown" : "whole"];

/** A short column name: "share (of whole)" / "share (of shown)"; proj's signed share is of the whole. */
export function shareColumn(v) {
  if (v.state.metric === "proj") return "signed share";
  return v.state.shown ? "share of shown" : "share of whole";
}

/** CSV column name for the share (machine-friendly, names the denominator). */
export function shareCsvColumn(v) {
  if (v.state.metric === "proj") return "signed_share_of_whole";
  return v.state.shown ? "share_of_sources_shown" : "share_of_whole_residual";
}

/** The sentence about hidden sources at cell (l, k, p), or "" when nothing is hidden. */
export function hiddenSentence(v, l, k, p) {
  const names = hiddenNames(v);
  if (!names) return "";
  const h = hiddenShare(v.V, v.D.P, v.state.metric, v.hidden, l, k, p);
  if (v.state.metric === "proj") return `Hidden (hatched): ${names}, signed share ${fmtPct(h)}; still counted.`;
  return v.state.shown
    ? `Shares of the sources shown: hidden ${names} (${fmtPct(h)} of the whole residual here) left out of the denominator.`
    : `Hidden (hatched): ${names}, ${fmtPct(h)} of the whole residual here; still counted in every share.`;
}

/** The hidden share of the whole at the last position's last row, for captions of a whole view. */
export function hiddenAtLast(v) {
  const D = v.D;
  return hiddenShare(v.V, D.P, v.state.metric, v.hidden, D.L - 1, 1, D.P - 1);
}

/** One line for the grid's caption and the figure: what the widths are a share of. */
export function shareCaption(v) {
  const names = hiddenNames(v);
  if (!names) return `Widths are each source's ${shareOf(v)}.`;
  const at = `${fmtPct(hiddenAtLast(v))} at the last position after the last layer`;
  return v.state.shown
    ? `Widths are ${shareOf(v)}: hidden ${names} is left out of the denominator (it holds ${at}).`
    : `Widths are ${shareOf(v)}; hidden ${names} is the hatched segment (${at}), still in every share.`;
}


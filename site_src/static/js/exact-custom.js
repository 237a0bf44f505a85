// Exact custom groups, where a page can compute them (the live page: its worker still holds the
// weights). Elsewhere a custom grouping is approximate: compute.js customVariant sums the stored
// norms of the tokens. With options.exactCustom, the viewer instead asks the page for the
// decomposition with the grouping as a variant (the source vectors summed before norms are
// taken, as infoflow.decompose(groups=[...]) does) and keeps the state it shows until it comes.
//
//   options.exactCustom(groups: number[] (P), group ids by first use) -> Promise of a decoded
//   variant (data.js shape: name "custom", G, groups, first, norm/delta/proj, logitAttr, ...).
//   It rejects with an AbortError when the visitor cancels.

export const EXACT_LABEL = "custom (exact, computed in your browser)";

const keyOf = (groups) => groups.join(".");

/** The exact variant for a state, if computed; undefined otherwise (or when not exact here). */
export function exactVariant(v, state) {
  if (!v.options.exactCustom || state.variant !== "custom" || !state.custom) return undefined;
  return v.exactCache.get(keyOf(state.custom));
}

/** True when moving to `next` (a whole state) needs a computation first. */
export function needsExact(v, next) {
  return !!(v.options.exactCustom && next.variant === "custom" && next.custom && !v.exactCache.has(keyOf(next.custom)));
}

/**
 * Compute the exact variant of next.custom, then call done(). While it runs the viewer is not
 * idle and shows what it showed; on cancel it stays there and says so; another error is shown
 * in the status line and the grouping falls back to what was shown.
 */
export function computeExact(v, next, done) {
  const key = keyOf(next.custom);
  v.pending = true;
  v.status("Computing the custom grouping exactly in your browser…");
  const job = v.exactJobs.get(key) || v.options.exactCustom([...next.custom]);
  v.exactJobs.set(key, job);
  return job.then((V) => {
    v.exactJobs.delete(key);
    V.exact = true;
    V.label = EXACT_LABEL;
    v.exactCache.set(key, V);
    v.pending = false;
    v.status("");
    done(true);
  }, (e) => {
    v.exactJobs.delete(key);
    v.pending = false;
    v.status(e && e.name === "AbortError" ? "Cancelled: the custom grouping was not computed."
      : `The custom grouping could not be computed: ${e && e.message ? e.message : e}`);
    done(false);
  });
}

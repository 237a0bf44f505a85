// Exact custom groups, where a page can compute them (the live page: its worker still holds the
// weights). Elsewhere a custom grouping is approximate: compute.js customVariant sums the stored
// norms of the tokens. With options.exactCustom, the viewer instead asks the page for the
// decomposition with the grouping as a variant (the source vectors summed before norms are
// taken, as infoflow.decompose(groups=[...]) does) and keeps the state it shows until it comes.
//
//   options.exactCustom(groups: number[] (P), group ids by first use) -> Promise of a decoded
//   variant (data.js shape: name "custom", G, groups, first, norm/delta/proj, logitAttr, ...).
//   It rejects with an AbortError when the visitor cancels; exactCustom.cancel(), if present,
//   is what the custom-groups bar's Cancel button calls.
//   options.exactOffer(onProgress) -> Promise of such an exactCustom: offered, not started (a
//   gallery page: the model is a 97 MB download). The custom-groups bar shows "Recompute
//   exactly in your browser"; pressing it turns exact groups on for the page (enableExact).

export const EXACT_LABEL = "custom (exact, computed in your browser)";
export const EXACT_NOTE = " exact (each change is computed in your browser)";

const $ = (id) => document.getElementById(id);

/** A status line that stays (progress), unlike v.status's 4-second messages. */
function progress(v, text) {
  clearTimeout(v.statusTimer);
  if ($("status")) $("status").textContent = text;
}

/** The gallery's button: exact groups from now on, starting with the grouping shown. */
export async function enableExact(v) {
  if (v.options.exactCustom || !v.options.exactOffer) return;
  try {
    v.options.exactCustom = await v.options.exactOffer((text) => progress(v, text));
  } catch (e) {
    v.status(`The in-browser engine could not be loaded: ${e && e.message ? e.message : e}`);
    return;
  }
  const option = document.querySelector('#grouping option[value="custom"]');
  if (option) option.textContent = EXACT_LABEL;
  if ($("custom-approx")) {
    $("custom-approx").textContent = EXACT_NOTE;
    $("custom-approx").classList.remove("approx");
  }
  if ($("group-exact")) $("group-exact").hidden = true;
  if (v.state.variant !== "custom") v.set({ variant: "custom", custom: v.state.custom || [...Array(v.D.P).keys()] });
  else v.set({}, { changed: ["variant"] });
}

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
  progress(v, "Computing the custom grouping exactly in your browser…");
  const job = v.exactJobs.get(key) || v.options.exactCustom([...next.custom]);
  v.exactJobs.set(key, job);
  const cancel = $("group-cancel");
  if (cancel && v.options.exactCustom.cancel) cancel.hidden = false;
  const settle = () => { v.exactJobs.delete(key); if (cancel) cancel.hidden = true; };
  return job.then((V) => {
    settle();
    V.exact = true;
    V.label = EXACT_LABEL;
    v.exactCache.set(key, V);
    v.pending = false;
    v.status("");
    done(true);
  }, (e) => {
    settle();
    v.pending = false;
    v.status(e && e.name === "AbortError" ? "Cancelled: the custom grouping was not computed."
      : `The custom grouping could not be computed: ${e && e.message ? e.message : e}`);
    done(false);
  });
}

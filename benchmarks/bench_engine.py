"""Benchmark of the decomposition engine (issue 2). Not a test: run by hand or `make bench`.

    .venv/bin/python benchmarks/bench_engine.py [--sizes 32 40 64 128] [--repeats 3] [--write]

On the default model (SmolLM2-135M-Instruct, offline) at prompts of exactly P tokens it
measures, side by side in one process:

* wall time of `decompose(logit_lens=False)` and of the default `decompose()` (the whole
  call: tokenize, the traced forward pass, the engine, logits, lens);
* the FLOP floor of each: the multiply-adds the method needs divided by this machine's
  sgemm rate, measured in the same run (2048×2048 float32 matmuls, best of all samples
  taken between the timed runs), and the ratio wall / floor;
* the naive per-query baseline below against the engine's `decompose_stack`, both on the
  same captured forward pass, decomposition only, with a check that they agree;
* peak extra memory of `decompose_stack`, from torch's own allocator events
  (torch.profiler with profile_memory=True: every CPU allocation and free, summed in order);
* the cost of per-head attribution (issue 13): `decompose_stack` with and without
  `heads=True` on the same captured pass, interleaved run by run (--heads-sizes, P = 64).

Times are the best of --repeats runs after one warm-up; the machine may be shared, so the
ratios (measured in the same run) are the figures to read.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infoflow import engine as E                                    # noqa: E402
from infoflow.weights import LayerWeights                           # noqa: E402
from infoflow.decompose import _nnsight, _weights, decompose, get_model   # noqa: E402
from infoflow.trace import capture                                   # noqa: E402

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "small brass lamp and a notebook in which he recorded the weather, the ships that passed "
    "and the birds that rested on the gallery rail. For forty years he had never missed a "
    "night. The villagers below said he talked to the sea, and perhaps he did: he would stand "
    "by the great lens for hours, watching the beam sweep across the water, counting the "
    "seconds between the flashes of the distant buoys. One winter a storm tore the roof from "
    "the keeper's cottage and flooded the lower rooms, yet the light kept turning. When the "
    "inspectors finally arrived in spring to replace the clockwork with an electric motor, "
    "they found the notebooks stacked neatly on a shelf, thousands of pages in a small careful "
    "hand, each entry ending with the same three words: the light held. They took the books "
    "to the museum in the capital, where visitors still read them, wondering what kind of "
    "patience it takes to keep a promise to no one in particular, night after night, while "
    "the rest of the world sleeps and the ships pass by without ever knowing your name."
)


# ----------------------------------------------------------------------------- inputs


def prompt_of(lm, P: int) -> str:
    """A prefix of TEXT that tokenizes to exactly P tokens."""
    tok = lm.tokenizer
    ids = tok(TEXT)["input_ids"]
    for cut in range(P, min(len(ids), P + 8) + 1):
        for lo in range(cut, P - 8, -1):
            text = tok.decode(ids[:lo], skip_special_tokens=True)
            if len(tok(text)["input_ids"]) == P:
                return text
    raise SystemExit(f"no prefix of the benchmark text has exactly {P} tokens")


class Rate:
    """This machine's sgemm rate (multiply-adds per second), two ways.

    * burst: single 2048² matmuls (~50 ms each); `best` is the best of all samples so far,
      which catches the machine at its fastest moment (strict for the ratio).
    * sustained: 2048² matmuls back to back for `window` seconds, right before and right
      after each timed run; their mean is that run's own reference, taken under the same
      load on the shared cores, for a paired ratio.
    """

    def __init__(self, n=2048, window=1.0):
        torch.manual_seed(0)
        self.a, self.b, self.n = torch.randn(n, n), torch.randn(n, n), n
        self.out = torch.empty(n, n)
        self.window = window
        self.best = 0.0
        self.samples: list[float] = []

    def sustained(self) -> float:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < self.window:
            torch.mm(self.a, self.b, out=self.out)
            done += 1
        return done * self.n ** 3 / (time.perf_counter() - t0)

    def sample(self, times=3):
        for _ in range(times):
            t = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)   # no fresh 16 MB output: page faults would slow the sample
            rate = self.n ** 3 / (time.perf_counter() - t)
            self.samples.append(rate)
            self.best = max(self.best, rate)
        return self.best


def dims(lm):
    c = lm.hf.config
    H = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or H
    hd = getattr(c, "head_dim", None) or c.hidden_size // H
    return dict(L=c.num_hidden_layers, d=c.hidden_size, d_kv=kv * hd, d_ff=c.intermediate_size,
                V=c.vocab_size)


def floor_macs(m, P: int, k: int = 5) -> tuple[float, float]:
    """(decomposition, default decompose()) multiply-adds at P tokens."""
    L, d, d_kv, d_ff, V = m["L"], m["d"], m["d_kv"], m["d_ff"], m["V"]
    T = P * (P + 1) // 2
    layer = T * d * d_kv + d * P * (P + 1) * (P + 2) / 6 + T * d * d + 2 * T * d * d_ff
    final = P * d * V + T * d * min(P * k, V)   # reconstructed logits + logit attribution
    decomp = L * layer + final
    return decomp, decomp + 2 * L * P * d * V


def timed(fn, repeats: int, rate: Rate, warm_up: bool = True,
          paired: bool = False) -> tuple[list[float], list[float]]:
    """Wall times of fn, burst sgemm samples between runs, and, when paired, each run's own
    sustained reference (mean of a window just before and one just after): (times, rates)."""
    if warm_up:
        fn()
    times, rates = [], []
    for _ in range(repeats):
        rate.sample(2)
        before = rate.sustained() if paired else 0.0
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if paired:
            rates.append((before + rate.sustained()) / 2)
    rate.sample(2)
    return times, rates


def paired_ratios(times, rates, macs) -> list[float]:
    return sorted(t * r / macs for t, r in zip(times, rates))


# ----------------------------------------------------------------------------- the naive baseline


def naive_decompose(captured: E.Captured, layers: list[LayerWeights]):
    """Per-query decomposition as in the original research code, dense P×P, float32.

    For each layer and each query position p it recomputes the values of every
    (position, source) pair of the dense P×P grid, mixes them with row p of the pattern,
    and pushes row p's P source vectors through o_proj and the frozen MLP. Vectorized
    over sources and heads inside each query iteration. No biases (the default model has
    none). Returns the final dense (P, P, d) contributions and the (L, 2, P, P) norms.
    """
    P, d = captured.resid_pre[0].shape
    L = len(layers)
    C = torch.zeros(P, P, d)
    C[torch.arange(P), torch.arange(P)] = captured.resid_pre[0]
    norms = torch.zeros(L, 2, P, P)
    for l, lw in enumerate(layers):
        H, kv = lw.n_heads, lw.n_kv
        hd = lw.Wv.shape[0] // kv
        scale1 = E.inv_rms(captured.resid_pre[l], lw.eps1)
        gate_scale = captured.gates[l] * E.inv_rms(captured.resid_mid[l], lw.eps2).unsqueeze(1)
        A = captured.patterns[l]                                     # (H, P, P)
        out = torch.empty_like(C)
        for p in range(P):
            V = (C * scale1[:, None, None]) @ lw.Wv.T                # (t, s, d_kv), recomputed
            V = V.view(P, P, kv, 1, hd).expand(P, P, kv, H // kv, hd).reshape(P, P, H, hd)
            o = torch.einsum("ht,tshe->she", A[:, p, :], V).reshape(P, H * hd)
            mid = C[p] + o @ lw.Wo.T                                 # (s, d)
            norms[l, 0, p] = torch.linalg.vector_norm(mid, dim=1)
            u = (mid @ lw.Wup.T) * gate_scale[p]
            out[p] = mid + u @ lw.Wdown.T
            norms[l, 1, p] = torch.linalg.vector_norm(out[p], dim=1)
        C = out
    return C, norms


def engine_stack(captured, layers, P, heads=False):
    tri = E.triangle(P, False)
    return E.decompose_stack(captured, layers, tri, [None], heads=heads), tri


def heads_cost(captured, layers, P, repeats: int) -> tuple[list[float], list[float]]:
    """Engine time without and with heads=True, interleaved (A B B A ...) after one warm-up
    each, so that both see the same load on the shared cores: (times without, times with)."""
    run = {False: lambda: engine_stack(captured, layers, P), True: lambda: engine_stack(captured, layers, P, heads=True)}
    run[False]()
    run[True]()
    times = {False: [], True: []}
    cpu = {False: [], True: []}
    inside = []                      # CPU time spent inside HeadStats.record, per run with heads
    record, spent = E.HeadStats.record, [0.0]

    def timed_record(self, *a, **k):
        c = time.process_time()
        record(self, *a, **k)
        spent[0] += time.process_time() - c
    E.HeadStats.record = timed_record
    try:
        for i in range(repeats):
            for h in ((False, True) if i % 2 == 0 else (True, False)):
                spent[0] = 0.0
                t, c = time.perf_counter(), time.process_time()
                run[h]()
                times[h].append(time.perf_counter() - t)
                cpu[h].append(time.process_time() - c)
                if h:
                    inside.append(spent[0] / cpu[h][-1])
    finally:
        E.HeadStats.record = record
    return times[False], times[True], cpu[False], cpu[True], inside


def agreement(captured, layers, P) -> str:
    """Max relative difference engine vs naive (final vectors, norms) and both sum identities."""
    (res, tri), (Cn, norms) = engine_stack(captured, layers, P), naive_decompose(captured, layers)
    dense = torch.zeros(P, P, Cn.shape[-1])
    dense[tri.pos, tri.src] = res.final
    vec = float((dense - Cn).abs().max() / Cn.abs().max())
    st = res.stats[0]
    nrm = float((st.norm - norms).abs().max() / norms.abs().max())
    r = captured.resid_final
    ident = float((torch.linalg.vector_norm(Cn.sum(1) - r, dim=1) / torch.linalg.vector_norm(r, dim=1)).max())
    return (f"vectors {vec:.1e}, norms {nrm:.1e}; sum identity: naive {ident:.1e}, "
            f"engine {float(res.recon_error.max()):.1e}")


# ----------------------------------------------------------------------------- memory


def peak_extra_bytes(fn) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator while fn runs."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 40, 64, 128])
    ap.add_argument("--naive-sizes", type=int, nargs="*", default=[32, 40, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-repeats", type=int, default=1)
    ap.add_argument("--heads-sizes", type=int, nargs="*", default=[64])
    ap.add_argument("--heads-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the tables into docs/performance.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    lm = get_model(None)
    m = dims(lm)
    layers, _ = _weights(lm, torch.float32)
    rate = Rate()
    rate.sample(5)
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    eng_rows, naive_rows, mem_rows, checks, head_rows = [], [], [], [], []
    for P in args.heads_sizes:
        ids = lm.tokenizer(prompt_of(lm, P))["input_ids"]
        captured = capture(_nnsight(lm), torch.tensor([ids]))
        t_off, t_on, c_off, c_on, inside = heads_cost(captured, layers, P, args.heads_repeats)
        head_rows.append((P, t_off, t_on, c_off, c_on, inside))
        print(f"P={P} heads: {min(t_off):.3f} s without, {min(t_on):.3f} s with", flush=True)
    for P in args.sizes:
        prompt = prompt_of(lm, P)
        assert decompose(prompt, lm, logit_lens=False).n_tokens == P
        f_dec, f_all = floor_macs(m, P)
        t_dec, r_dec = timed(lambda: decompose(prompt, lm, logit_lens=False), args.repeats, rate,
                             paired=True)
        t_all, r_all = timed(lambda: decompose(prompt, lm), args.repeats, rate, paired=True)
        d = decompose(prompt, lm)
        eng_rows.append((P, t_dec, t_all, f_dec, f_all, d.timings,
                         paired_ratios(t_dec, r_dec, f_dec), paired_ratios(t_all, r_all, f_all),
                         r_dec + r_all))
        print(f"P={P}: {min(t_dec):.3f} s / {min(t_all):.3f} s", flush=True)

        ids = lm.tokenizer(prompt)["input_ids"]
        captured = capture(_nnsight(lm), torch.tensor([ids]))
        T = P * (P + 1) // 2
        layer_bytes = T * m["d"] * 4
        chunk = max(64, (64 << 20) // (4 * (m["d_ff"] + 2 * m["d"])))
        chunk_bytes = min(chunk, T) * (m["d_ff"] + 2 * m["d"]) * 4   # u, delta, C rows
        peak = peak_extra_bytes(lambda: engine_stack(captured, layers, P))
        mem_rows.append((P, peak, layer_bytes, chunk_bytes))

        if P in args.naive_sizes:
            t_eng, _ = timed(lambda: engine_stack(captured, layers, P), args.repeats, rate)
            # The naive loop uses the same few ops as the (warm) engine: no warm-up, and
            # fewer repeats, since it is slow.
            t_nv, _ = timed(lambda: naive_decompose(captured, layers), args.naive_repeats, rate,
                            warm_up=False)
            naive_rows.append((P, t_eng, t_nv))
            checks.append((P, agreement(captured, layers, P)))
            print(f"  naive {min(t_nv):.3f} s vs engine {min(t_eng):.3f} s", flush=True)

    g = rate.best
    eng_rows.sort(key=lambda r: r[0])
    naive_rows.sort(key=lambda r: r[0])
    mem_rows.sort(key=lambda r: r[0])
    checks.sort(key=lambda r: r[0])
    given = " ".join(argv if argv is not None else sys.argv[1:])
    cmd = (".venv/bin/python benchmarks/bench_engine.py " + given).strip()
    if given == "--write":
        cmd = "make bench   # = " + cmd
    out(f"Command: `{cmd.strip()}`")
    out()
    out(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. sgemm (2048² float32): best "
        f"{2 * g / 1e9:.0f} GFLOP/s = {g / 1e9:.1f} G multiply-adds/s, median "
        f"{2 * statistics.median(rate.samples) / 1e9:.0f} GFLOP/s over {len(rate.samples)} samples "
        "taken between the timed runs.")
    out(f"Model: {lm.info.get('id')} (L={m['L']}, d={m['d']}, d_kv={m['d_kv']}, d_ff={m['d_ff']}, "
        f"V={m['V']}). Times: best of {args.repeats} after one warm-up (median in brackets).")
    out()
    gm = statistics.median(rate.samples)
    if eng_rows:
        sus = [r for row in eng_rows for r in row[8]]
        out(f"Sustained sgemm (1 s windows of back-to-back 2048² matmuls before and after each timed "
            f"run): {min(sus) / 1e9:.0f}–{max(sus) / 1e9:.0f} G multiply-adds/s, median "
            f"{statistics.median(sus) / 1e9:.0f} G.")
        out()
        out("| P | T | `decompose(logit_lens=False)` | floor (a) | ratio: best burst / median burst / "
            "paired sustained (best, median run) | default `decompose()` | floor (b) | ratio: best "
            "burst / median burst / paired sustained (best, median run) | engine / logits / lens / "
            "trace in the default call |")
        out("|---|---|---|---|---|---|---|---|---|")
        for P, t_dec, t_all, f_dec, f_all, tim, pr_dec, pr_all, _ in eng_rows:
            T = P * (P + 1) // 2
            out(f"| {P} | {T} | {min(t_dec):.3f} s ({statistics.median(t_dec):.3f}) | {f_dec / g:.3f} s | "
                f"**{min(t_dec) / (f_dec / g):.2f}** / {min(t_dec) / (f_dec / gm):.2f} / "
                f"{pr_dec[0]:.2f}, {statistics.median(pr_dec):.2f} | "
                f"{min(t_all):.3f} s ({statistics.median(t_all):.3f}) | {f_all / g:.3f} s | "
                f"**{min(t_all) / (f_all / g):.2f}** / {min(t_all) / (f_all / gm):.2f} / "
                f"{pr_all[0]:.2f}, {statistics.median(pr_all):.2f} | "
                f"{tim['decompose']:.2f} / {tim['logits']:.2f} / {tim.get('logit_lens', 0):.2f} / "
                f"{tim['trace']:.2f} s |")
        out()
        out("Ratios: wall ÷ floor. *Best burst* divides by the single fastest 2048² sample of the "
            "whole run (the strictest reading); *median burst* by the median sample; *paired "
            "sustained* gives each timed run its own reference, the sustained rate measured just "
            "before and after it, and lists the best and the median run.")
        out()
        out("Floor (a): Σ_layers [T·d·d_kv (values) + d·P(P+1)(P+2)/6 (causal head mixing) + T·d² "
            "(o_proj) + 2·T·d·d_ff (MLP)] + P·d·V (reconstructed logits) + T·d·5P (logit attribution), "
            "T = P(P+1)/2, in multiply-adds ÷ the best sgemm rate. Floor (b): (a) + 2·L·P·d·V (logit "
            "lens at every cell). The wall time is the whole call, so it also holds the traced forward "
            "pass, which neither floor counts.")
    if naive_rows:
        out()
        out("| P | naive per-query (dense P×P) | engine `decompose_stack` | speed-up |")
        out("|---|---|---|---|")
        for P, t_eng, t_nv in naive_rows:
            out(f"| {P} | {min(t_nv):.3f} s | {min(t_eng):.3f} s | **{min(t_nv) / min(t_eng):.1f}×** |")
        out()
        out("Decomposition only on both sides, same captured forward pass; both also produce the "
            "per-sublayer source norms. Agreement (max relative difference, float32):")
        for P, c in checks:
            out(f"- P={P}: {c}")
    if head_rows:
        out()
        out("| P | `decompose_stack` without heads | with `heads=True` | extra wall time: best / "
            "median / median of run pairs | extra CPU time (process): median of run pairs | "
            "share of the CPU time inside HeadStats.record (median) |")
        out("|---|---|---|---|---|---|")
        for P, t_off, t_on, c_off, c_on, inside in head_rows:
            pairs = [b / a - 1 for a, b in zip(t_off, t_on)]
            cpairs = [b / a - 1 for a, b in zip(c_off, c_on)]
            out(f"| {P} | {min(t_off):.3f} s ({statistics.median(t_off):.3f}) | {min(t_on):.3f} s "
                f"({statistics.median(t_on):.3f}) | **{min(t_on) / min(t_off) - 1:+.1%}** / "
                f"{statistics.median(t_on) / statistics.median(t_off) - 1:+.1%} / "
                f"{statistics.median(pairs):+.1%} | {statistics.median(cpairs):+.1%} | "
                f"{statistics.median(inside):.1%} |")
        out()
        out(f"Per-head attribution: engine only, same captured pass, identity grouping; "
            f"{args.heads_repeats} runs of each after one warm-up, interleaved (without, with, "
            "with, without, ...), best (median in brackets). Target (issue 13): at most +15 % at P = 64.")
    out()
    out("| P | peak extra memory of `decompose_stack` | one layer's C (T·d·4) | one MLP chunk "
        "(rows·(d_ff+2d)·4) | bound 3·C + chunk | peak / bound |")
    out("|---|---|---|---|---|---|")
    for P, peak, lb, cb in mem_rows:
        bound = 3 * lb + cb
        out(f"| {P} | {peak / 2**20:.1f} MiB | {lb / 2**20:.1f} MiB | {cb / 2**20:.1f} MiB | "
            f"{bound / 2**20:.1f} MiB | {peak / bound:.2f} |")
    out()
    out("Memory: torch.profiler(profile_memory=True) allocation and free events of the CPU "
        "allocator during one `decompose_stack` call (identity grouping), summed in time order; "
        "the peak includes the returned C and the (L, 2, P, S) statistics.")

    if args.write:
        _write_doc("\n".join(lines))
    return lines


def _write_doc(table: str):
    path = ROOT / "docs" / "performance.md"
    text = path.read_text() if path.exists() else ""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

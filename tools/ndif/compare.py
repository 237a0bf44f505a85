"""make ndif-check, last step: the same prompts through `infoflow decompose --remote` (NDIF at
$NDIF_HOST) and `infoflow decompose` (this machine), compared array by array.

Usage: compare.py MODEL_FOLDER SCRATCH_DIR. Prints, per prompt, the remote run's wire line and
the largest relative difference; then a few bad-input runs against the live stack; then one
final line: remote vs local: max rel diff X on N prompts; remote T s, local T s.

Relative difference of an array: max |remote - local| / max |local| (the array's scale, so a
near-zero entry does not blow it up); prediction ids must be equal; the reconstruction error,
being round-off itself, is not compared but must stay under 1e-4 on both sides. T: wall time of the CLI
commands, summed over the prompts (each a fresh process: imports, model or meta-model load,
tokenizing, the run).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = [  # (text, extra CLI arguments)
    ("The capital of France is", []),
    ("def add(a, b):\n    return a + b", []),
    ("Unbelievably, the reconstruction holds for every word.", ["--groups", "words"]),
]
TOLERANCE = 1e-5
RECON_BOUND = 1e-4   # the worst reconstruction error either run may report (tests/test_remote.py)
CLI = [sys.executable, "-m", "infoflow.cli", "decompose"]


def run(args: list[str], timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0


def rel_diff(remote: dict, local: dict) -> float:
    worst = 0.0
    for key, l in local.items():
        r = remote[key]
        if r.shape != l.shape:
            raise SystemExit(f"ndif-check: {key}: remote shape {r.shape} != local {l.shape}")
        if key == "pred_ids":
            if not np.array_equal(r, l):
                raise SystemExit("ndif-check: remote and local predictions differ")
            continue
        if key == "recon_error":   # round-off itself (~1e-6): bounded, not compared
            if max(float(r.max()), float(l.max())) > RECON_BOUND:
                raise SystemExit(f"ndif-check: reconstruction error above {RECON_BOUND:.0e}")
            continue
        scale = float(np.abs(l).max()) or 1.0
        worst = max(worst, float(np.abs(r.astype(np.float64) - l).max()) / scale)
    return worst


def expect_one_line(what: str, args: list[str], must: str) -> None:
    """A bad-input run: exit code 1, one line on the terminal, no traceback."""
    p, t = run(args, timeout=300)
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    ok = p.returncode == 1 and len(lines) == 1 and must in lines[0] and "Traceback" not in p.stderr
    print(f"bad input  {what}: {'ok' if ok else 'NOT ONE CLEAR LINE'} in {t:.1f} s: "
          f"{lines[-1] if lines else '(nothing)'}")
    if not ok:
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise SystemExit(f"ndif-check: {what}: expected one line containing {must!r}")


def main(model: str, scratch: str) -> None:
    scratch = Path(scratch)
    host = os.environ["NDIF_HOST"]
    worst, t_remote, t_local = 0.0, 0.0, 0.0
    for i, (text, extra) in enumerate(PROMPTS):
        r_out, l_out = scratch / f"remote{i}.npz", scratch / f"local{i}.npz"
        base = [text, "--model", model, *extra]
        rp, tr = run(base + ["--remote", "--save-summary", str(r_out)])
        if rp.returncode != 0:
            print(rp.stdout + rp.stderr, file=sys.stderr)
            raise SystemExit(f"ndif-check: the remote run failed on prompt {i}")
        lp, tl = run(base + ["--no-lens", "--save-summary", str(l_out)])
        if lp.returncode != 0:
            print(lp.stdout + lp.stderr, file=sys.stderr)
            raise SystemExit(f"ndif-check: the local run failed on prompt {i}")
        with np.load(r_out) as r, np.load(l_out) as l:
            diff = rel_diff(dict(r), dict(l))
        worst, t_remote, t_local = max(worst, diff), t_remote + tr, t_local + tl
        wire = next((line for line in rp.stdout.splitlines() if line.startswith("wire")), "wire ?")
        print(f"prompt {i}   {text[:40]!r}{' ' + ' '.join(extra) if extra else ''}: "
              f"rel diff {diff:.1e}; remote {tr:.1f} s, local {tl:.1f} s")
        print(f"           {wire}")

    # Bad input against the live stack: a model this server does not serve (the same
    # config and tokenizer in another folder: another model key), an unreachable host.
    other = scratch / "another-model"
    other.mkdir()
    for f in Path(model).iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, other / f.name)
    expect_one_line("another model", [PROMPTS[0][0], "--model", str(other), "--remote", "--timeout", "120"],
                    "does not serve")
    expect_one_line("unreachable host", [PROMPTS[0][0], "--model", model, "--remote",
                                         "--ndif-host", "http://127.0.0.1:9"], "could not reach NDIF")

    print(f"remote vs local: max rel diff {worst:.1e} on {len(PROMPTS)} prompts; "
          f"remote {t_remote:.1f} s, local {t_local:.1f} s")
    if worst > TOLERANCE:
        raise SystemExit(f"ndif-check: max rel diff {worst:.1e} exceeds {TOLERANCE:.0e}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

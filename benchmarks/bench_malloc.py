"""What glibc's default allocator costs a forward pass, and what `steady_malloc` gives back.

By default glibc hands large freed blocks back to the OS, so every pass faults its activations
in again (minor page faults); how many depends on what the process allocated before, since
glibc raises its mmap threshold as it goes. `uvc.torch.latency.steady_malloc` keeps freed memory
in the process; every uvc timing calls it (module doc of `uvc.torch.latency`).

The setting holds for the rest of a process, so each mode runs in processes of its own: rounds
alternate a default process and a steady one (default, steady, default, steady, ...), each timing
every model with `compare_latency` (models interleaved); a model's ms in a mode is the median
over its rounds, and the ratio compares the two modes' medians.

    python benchmarks/bench_malloc.py [--threads 2] [--rounds 3]
    python benchmarks/bench_malloc.py --smoke     # the demo model at batch 64, one round (CI)

Models (random weights, the shapes that matter): the demo (batch 1 and 64), the deep model
(batch 64) and DeiT-Small at 224 (batch 1 and 16), each exported dense as a `SlimViT`. Prints
a table and writes benchmarks/results/malloc.json (malloc_smoke.json with --smoke; or --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from uvc.report import table

from common import RESULTS

# (model, batch sizes)
MODELS = (("demo", (1, 64)), ("deep", (64,)), ("deit_small_patch16_224", (1, 16)))
MODES = ("default", "steady")


def one_round(mode: str, models, threads: int | None, repeats: int, warmup: int) -> dict:
    """In this process: `steady_malloc` if ``mode`` is "steady", then every model timed at its
    batch sizes; ``{model: {batch: {"median_ms", "page_faults"}}}``."""
    from uvc.plan import ArchPlan
    from uvc.torch.latency import compare_latency, steady_malloc
    from uvc.torch.pipeline import load_model
    from uvc.torch.profile import spec_and_config
    from uvc.torch.slim import SlimViT
    if mode == "steady" and not steady_malloc():
        raise SystemExit("steady_malloc: this C library is not glibc; there is nothing to compare")
    out = {}
    for name, batches in models:
        spec, config = spec_and_config(load_model(name)[0])
        model = SlimViT(spec, ArchPlan.dense(spec), **config)
        measured = compare_latency({name: model}, (spec.in_channels, *spec.image_size), batches, warmup=warmup,
                                   repeats=repeats, threads=threads, steady_malloc=mode == "steady")[name]
        out[name] = {str(b): {"median_ms": m["median_ms"], "page_faults": m["page_faults"]}
                     for b, m in measured.items()}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=3, help="processes per mode, alternating")
    p.add_argument("--repeats", type=int, default=10, help="timed passes per model and batch size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="the demo at batch 64, one round, 3 warm-up and 3 timed passes")
    p.add_argument("--out", help="the JSON to write (default benchmarks/results/malloc[_smoke].json)")
    p.add_argument("--round", dest="round_mode", choices=MODES, help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    models = (("demo", (64,)),) if args.smoke else MODELS
    if args.smoke:
        # Three warm-up passes: after one, glibc sometimes still grows the heap in a timed pass
        # (a median of 200 page faults with the steady allocator in 2 of 9 runs here; 0 in 8 with three).
        args.rounds, args.repeats, args.warmup = 1, 3, 3
    if args.round_mode:
        print(json.dumps(one_round(args.round_mode, models, args.threads, args.repeats, args.warmup)))
        return {}
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")

    runs = {mode: [] for mode in MODES}
    child = [sys.executable, str(Path(__file__).resolve()), "--repeats", str(args.repeats), "--warmup",
             str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else []) + (
                ["--smoke"] if args.smoke else [])
    for r in range(args.rounds):
        for mode in MODES:
            done = subprocess.run(child + ["--round", mode], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"round {r + 1} ({mode}) failed:\n{done.stderr[-2000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {mode} done", file=sys.stderr)

    rows = []
    for name, batches in models:
        for b in map(str, batches):
            ms = {mode: statistics.median(run[name][b]["median_ms"] for run in runs[mode]) for mode in MODES}
            faults = {mode: statistics.median(run[name][b]["page_faults"] for run in runs[mode]) for mode in MODES}
            rows.append({"model": name, "batch": int(b), "ms": ms, "page_faults": faults,
                         "ms_each_round": {mode: [run[name][b]["median_ms"] for run in runs[mode]] for mode in MODES},
                         "steady_over_default": ms["steady"] / ms["default"]})
    print(table(["model", "batch", "default ms", "page faults / pass", "steady ms", "page faults / pass",
                 "steady / default"],
                [[r["model"], r["batch"], f"{r['ms']['default']:.2f}", f"{r['page_faults']['default']:.0f}",
                  f"{r['ms']['steady']:.2f}", f"{r['page_faults']['steady']:.0f}", f"{r['steady_over_default']:.3f}"]
                 for r in rows]))
    data = {"benchmark": "malloc", "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
            "threads": args.threads, "smoke": args.smoke, "rows": rows}
    out = Path(args.out) if args.out else RESULTS / f"malloc{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print("wrote", out)
    return data


if __name__ == "__main__":
    main()

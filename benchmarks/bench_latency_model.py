"""How well a measured latency table prices plans: table-predicted vs measured latency of
exported models (issue 13).

    python benchmarks/bench_latency_model.py                                # the demo model, CPU, batch 1
    python benchmarks/bench_latency_model.py --model deit_small_patch16_224 --batch-size 16 --threads 2
    python benchmarks/bench_latency_model.py --device cuda --dtype float16 --batch-size 64
    python benchmarks/bench_latency_model.py --tokens --threads 2           # and plans that prune tokens
    python benchmarks/bench_latency_model.py --smoke --out /tmp/lm.json     # tiny, for the test

Profiles the model's spec (`uvc.torch.profile.profile`; the table is cached in the results
folder, keyed by model, device, dtype, batch size and threads, so reruns skip it; ``--table``
reuses a given one), then draws ``--plans`` random plans that keep every token: a third fully
random (value widths and MLP widths anywhere, interpolated by the table), a third snapped to the
table's grid, a third with many skipped block parts. With ``--tokens`` the table has a token axis
(`default_tokens`) and every fourth plan drops tokens instead (kind "tokens": most blocks drop
some, the counts anywhere between the table's token points). Each is exported as a `SlimViT` (random
weights, the model's configuration) and all of them plus the dense one are timed interleaved in
one run (`compare_latency`). Prints per plan the table's price and the measured median, and
writes them to benchmarks/results/latency_model.json (or ``--out``). A table with ``chain_ms``
(every table with a token axis) is also priced without it, side by side: what the per-token-count
chain scale changes.

With ``--rounds R`` (R > 1) the profile and the timing alternate R times in one run (profile,
time the plans, profile, time, ...), always profiling afresh: the table's times are the medians
of the R tables and each plan's measured ms the median of its R medians, so a drift of the
machine between the profile and the timing hits both alike (cached as ``..._rR.json``).

Targets: median |predicted − measured| / measured ≤ 10 % and Spearman rank correlation
≥ 0.9 between predicted and measured. MACs' rank correlation is shown for comparison.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from uvc import LatencyTable, cost, random_plan
from uvc.plan import PLAN_ROW, ArchPlan, LayerPlan
from uvc.report import table as text_table
from uvc.spec import ViTSpec
from uvc.torch.latency import compare_latency
from uvc.torch.pipeline import load_model
from uvc.torch.profile import DTYPES, TABLE_FORMAT, default_tokens, load_table, profile, save_table, spec_and_config
from uvc.torch.slim import SlimViT

from common import RESULTS

TARGET_ERR, TARGET_RHO = 0.10, 0.9


def plan_from_counts(spec: ViTSpec, counts) -> ArchPlan:
    """A plan with the given `PLAN_ROW` rows (query/key dims at full width), keeping the first
    heads, value dims and neurons (latency does not depend on which)."""
    layers = []
    for row in counts:
        c = dict(zip(PLAN_ROW, (int(x) for x in row)))
        h = c["heads"]
        layers.append(LayerPlan(heads=tuple(range(h)), v_index=(tuple(range(c["v_dim"])),) * h,
                                neurons=tuple(range(c["neurons"])), tokens=c["tokens"], attn=bool(c["attn"]),
                                mlp=bool(c["mlp"])))
    return ArchPlan(spec, tuple(layers))


def _snap(grid, x: int) -> int:
    grid = np.asarray(grid)
    return int(grid[np.abs(grid - x).argmin()])


def draw_plans(spec: ViTSpec, table: dict, count: int, seed: int, tokens: bool = False) -> dict[str, tuple[str, ArchPlan]]:
    """``count`` plans, by name: (kind, plan); kinds cycle through random, snapped (value and MLP
    widths on the table's grid) and skip (half the block parts off), all keeping every token,
    and with ``tokens`` also "tokens" (blocks drop tokens with probability 0.7)."""
    rng = np.random.default_rng(seed)
    kinds = ("random", "snapped", "skip") + (("tokens",) if tokens else ())
    plans = {}
    for i in range(count):
        kind = kinds[i % len(kinds)]
        plan = random_plan(spec, rng, skip_prob=0.5 if kind == "skip" else 0.15, tokens=kind == "tokens",
                           drop_prob=0.7)
        if kind == "snapped":
            rows = plan.counts.copy()
            col = {name: PLAN_ROW.index(name) for name in PLAN_ROW}
            for row in rows:
                if row[col["attn"]]:
                    row[col["v_dim"]] = _snap(table["v_dims"], row[col["v_dim"]])
                if row[col["mlp"]]:
                    row[col["neurons"]] = _snap(table["neurons"], row[col["neurons"]])
            plan = plan_from_counts(spec, rows)
        plans[f"p{i + 1:02d}_{kind}"] = (kind, plan)
    return plans


# The table's times: what `median_table` takes the median of across rounds.
TIME_KEYS = ("attention_ms", "attention_spread_ms", "mlp_ms", "mlp_spread_ms", "drop_ms", "drop_spread_ms", "fixed_ms",
             "fixed_spread_ms", "dense_ms", "dense_spread_ms", "chain_ms", "chain_spread_ms", "dense_page_faults")


def median_table(tables: list[dict]) -> dict:
    """The first table with each time (``TIME_KEYS``) replaced by its elementwise median over
    ``tables`` (profiled alike, so their grids agree) and ``repeats`` summed."""
    merged = dict(tables[0], repeats=sum(t["repeats"] for t in tables))
    for key in TIME_KEYS:
        if key in merged:
            value = np.median([np.asarray(t[key], dtype=np.float64) for t in tables], axis=0)
            merged[key] = value.tolist() if value.ndim else float(value)
    return merged


def _cache_path(folder: Path, model: str, args, threads: int) -> Path:
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name if Path(model).is_dir() else model)
    extra = (("" if args.sdpa else "_nosdpa") + ("_tokens" if args.tokens else "") + ("_smoke" if args.smoke else "")
             + (f"_r{args.rounds}" if args.rounds > 1 else ""))
    return folder / f"latency_table_{key}_{args.device}_{args.dtype}_b{args.batch_size}_t{threads}{extra}.json"


def _profile(source, spec: ViTSpec, args, threads: int) -> dict:
    return profile(source, device=args.device, batch_size=args.batch_size, dtype=args.dtype, threads=threads,
                   tokens=default_tokens(spec) if args.tokens else None, repeats=args.repeats, warmup=args.warmup,
                   sdpa=args.sdpa)


def get_table(source, spec: ViTSpec, args, threads: int, folder: Path) -> tuple[dict, Path]:
    """``--table``, else the cached table for this model and setting, else a fresh profile
    (then cached)."""
    path = Path(args.table) if args.table else _cache_path(folder, args.model, args, threads)
    if path.exists() and args.rounds == 1:
        table = load_table(path)
        # Profiled before chains were timed, or before narrow value widths were padded for SDPA.
        stale = not args.table and ((args.tokens and "chain_ms" not in table) or table["format"] != TABLE_FORMAT)
        if ViTSpec.from_dict(table["spec"]).replace(name=None) == spec.replace(name=None) and not stale:
            print(f"latency table: {path} (cached)")
            return table, path
        if args.table:
            raise SystemExit(f"--table {path} was measured for another spec than {args.model}'s")
    table = _profile(source, spec, args, threads)
    folder.mkdir(parents=True, exist_ok=True)
    save_table(table, path)
    print(f"latency table: {path} (profiled, {table['repeats']} repeats)")
    return table, path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="'demo', a timm model name or an exported folder")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--plans", type=int, default=30, help="random plans besides the dense one")
    p.add_argument("--repeats", type=int, default=30, help="timed passes, for the profile and the plans")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-sdpa", dest="sdpa", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", help="a latency table to use instead of profiling")
    p.add_argument("--tokens", action="store_true", help="profile token counts too and draw plans that drop tokens")
    p.add_argument("--out", default=str(RESULTS / "latency_model.json"))
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate a fresh profile and the timing this many times; medians over the rounds")
    p.add_argument("--smoke", action="store_true", help="tiny: the demo model, 6 plans, 3 repeats, 1 thread")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.rounds > 1 and args.table:
        p.error("--rounds profiles afresh in every round; it does not take --table")
    if args.smoke:
        args.model, args.plans, args.repeats, args.warmup = "demo", 6, 3, 1
        args.threads = args.threads or 1
    threads = args.threads or torch.get_num_threads()
    out = Path(args.out)

    source, _ = load_model(args.model)
    spec, config = spec_and_config(source)
    # Round 1's table draws the plans (their snapped widths need only its grid, the same in every round).
    table, table_path = get_table(source, spec, args, threads, out.parent)
    dense = ArchPlan.dense(spec)
    if args.tokens and len(table.get("tokens", ())) <= 1:
        raise SystemExit(f"--tokens: the table {table_path} has no token axis; profile one (drop --table)")
    plans = {"dense": ("dense", dense), **draw_plans(spec, table, args.plans, args.seed, tokens=args.tokens)}
    dd = dict(device=torch.device(args.device), dtype=DTYPES[args.dtype])
    models = {name: SlimViT(spec, plan, **config, fused_attn=args.sdpa, **dd) for name, (_, plan) in plans.items()}

    def timed() -> dict:
        return compare_latency(models, (spec.in_channels, *spec.image_size), (args.batch_size,), warmup=args.warmup,
                               repeats=args.repeats, threads=threads, device=args.device)

    measured = timed()
    if args.rounds > 1:
        tables, rounds = [table], [measured]
        for r in range(1, args.rounds):
            print(f"round {r + 1}/{args.rounds}: profile, then the plans", flush=True)
            tables.append(_profile(source, spec, args, threads))
            rounds.append(timed())
        table = median_table(tables)
        save_table(table, table_path)
        measured = {name: {args.batch_size: {k: float(np.median([m[name][args.batch_size][k] for m in rounds]))
                                             for k in ("median_ms", "p10_ms", "p90_ms")}} for name in models}
    priced = LatencyTable(table, source=str(table_path))  # the core's price of a plan
    # The same table without its per-token-count chain scale, priced side by side.
    unchained = (LatencyTable({k: v for k, v in table.items() if k not in ("chain_ms", "chain_spread_ms")},
                              source=str(table_path)) if "chain_ms" in table else None)

    dense_macs = cost.count(spec, dense).macs
    rows = []
    for name, (kind, plan) in plans.items():
        m = measured[name][args.batch_size]
        predicted = priced.predict(plan)
        rows.append({"name": name, "kind": kind, "predicted_ms": predicted, "measured_ms": m["median_ms"],
                     **({} if unchained is None else {"unchained_ms": unchained.predict(plan)}),
                     "measured_p10_ms": m["p10_ms"], "measured_p90_ms": m["p90_ms"],
                     "rel_err": predicted / m["median_ms"] - 1, "macs_ratio": cost.count(spec, plan).macs / dense_macs,
                     "counts": plan.counts.tolist()})
    pred, meas = np.array([r["predicted_ms"] for r in rows]), np.array([r["measured_ms"] for r in rows])
    err = float(np.median(np.abs(pred / meas - 1)))
    # The same on latency ratios to the dense model: what a budget is, and immune to the drift of
    # a shared machine between the profile and this run (the first row is the dense plan).
    ratio_err = float(np.median(np.abs((pred / pred[0]) / (meas / meas[0]) - 1)))
    rho = float(spearmanr(pred, meas).statistic)
    rho_macs = float(spearmanr([r["macs_ratio"] for r in rows], meas).statistic)
    met = {"median_abs_rel_err": err <= TARGET_ERR, "spearman": rho >= TARGET_RHO}
    kinds = np.array([r["kind"] for r in rows])

    def median_by_kind(abs_err: np.ndarray) -> dict:
        return {k: float(np.median(abs_err[kinds == k])) for k in dict.fromkeys(kinds.tolist())}

    by_kind = median_by_kind(np.abs(pred / meas - 1))
    if unchained is not None:
        flat = np.array([r["unchained_ms"] for r in rows])
        chain_off = {"median_abs_rel_err": float(np.median(np.abs(flat / meas - 1))),
                     "spearman": float(spearmanr(flat, meas).statistic),
                     "by_kind": median_by_kind(np.abs(flat / meas - 1))}

    print(text_table(["plan", "MACs ratio", "predicted ms", "measured ms", "p10-p90 ms", "error"],
                     [[r["name"], f"{r['macs_ratio']:.3f}", f"{r['predicted_ms']:.3f}", f"{r['measured_ms']:.3f}",
                       f"{r['measured_p10_ms']:.3f}-{r['measured_p90_ms']:.3f}", f"{r['rel_err']:+.1%}"]
                      for r in rows]))
    d = table["device"]
    print(f"\n{args.model} on {d['type']} ({d['name']}), {d['dtype']}, batch {args.batch_size}, {threads} threads, "
          f"{len(rows)} plans, {args.repeats} repeats" + (f" x {args.rounds} rounds" if args.rounds > 1 else ""))
    print(f"median |error| {err:.1%} (target <= {TARGET_ERR:.0%}), Spearman {rho:.3f} (target >= {TARGET_RHO}); "
          f"MACs' Spearman {rho_macs:.3f}; median |error| of the latency ratios to dense {ratio_err:.1%}")
    print("median |error| by kind: " + ", ".join(f"{k} {v:.1%}" for k, v in by_kind.items()))
    if unchained is not None:
        print(f"the same table without its chain scale (chain_ms): median |error| "
              f"{chain_off['median_abs_rel_err']:.1%}, Spearman {chain_off['spearman']:.3f}; by kind: "
              + ", ".join(f"{k} {v:.1%}" for k, v in chain_off["by_kind"].items()))
    if all(met.values()):
        print("targets met")
    else:
        missed = [k for k, ok in met.items() if not ok]
        banner = "!" * 72
        print(f"{banner}\nTARGETS MISSED: {', '.join(missed)} -- the table does not price this device well enough"
              f"{' (smoke: 3 repeats, noise expected)' if args.smoke else ''}\n{banner}")

    data = {"benchmark": "latency_model", "model": args.model, "spec": spec.to_dict(), "device": d,
            "batch_size": args.batch_size, "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
            "seed": args.seed, "smoke": args.smoke, "tokens": args.tokens, "rounds": args.rounds, "table": str(table_path), "plan_row": list(PLAN_ROW),
            "median_abs_rel_err": err, "median_abs_ratio_err": ratio_err, "median_abs_rel_err_by_kind": by_kind, "spearman": rho, "macs_spearman": rho_macs,
            "without_chain_scale": None if unchained is None else chain_off,
            "targets": {"median_abs_rel_err": TARGET_ERR, "spearman": TARGET_RHO}, "met": met, "plans": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Same budget fraction, priced in MACs or in measured milliseconds: how fast do the plans run?

For one model shape (random weights: latency does not depend on them), the solver runs on
fixed scores (the squared norms of the proj / fc2 input columns of the timm model as built,
no training) to 0.5 (``--budget``) of the dense cost in each of these ways, and every plan is
exported as a `uvc.torch.SlimViT` and timed interleaved with the dense model in one run:

  macs            the solver under a MACs budget (the `uvc` convention);
  macs_round32    the same solver state, ``plan(round_to=32)`` (where the widths allow it);
  latency@B       the solver under a latency budget priced by a table profiled at batch B
                  (`uvc.torch.profile.profile`, cached under benchmarks/results/latency_tables/);
  skip_half       every other block skipped (half the blocks: about half the MACs);
  halved          every layer keeps half its heads and half its MLP neurons, full value width.

Per plan: MACs ratio, each table's predicted latency ratio, and the measured latency ratio at
each batch size (median of ``--repeats`` interleaved passes). Target (issue 13): the latency
plans measure at most 0.55 of the dense latency at the batch sizes of their tables.

    python benchmarks/bench_latency_budget.py                                  # DeiT-S at 224, batch 1 and 16
    python benchmarks/bench_latency_budget.py --model demo --batch-sizes 1 64
    python benchmarks/bench_latency_budget.py --device cuda --dtype float16 --batch-sizes 1 256   # on a GPU
    python benchmarks/bench_latency_budget.py --smoke                          # the demo, tiny repeats (CI)

Prints a table and writes benchmarks/results/latency_budget_<model>.json (with _<device>_<dtype>
before .json off the CPU or in another dtype).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import uvc
from uvc.report import table as text_table
from uvc.torch import SlimViT, spec_from_model
from uvc.torch.introspect import model_config
from uvc.torch.latency import compare_latency
from uvc.torch.pipeline import load_model
from uvc.torch.profile import DTYPES, TABLE_FORMAT, load_table, profile, save_table

from common import RESULTS


def column_scores(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head, value-dim and neuron scores of a timm ViT: squared proj / fc2 input-column norms."""
    spec = spec_from_model(model)
    dims = np.stack([b.attn.proj.weight.detach().double().pow(2).sum(0).numpy() for b in model.blocks])
    dims = dims.reshape(spec.depth, spec.num_heads, spec.v_head_dim)
    neurons = np.stack([b.mlp.fc2.weight.detach().double().pow(2).sum(0).numpy() for b in model.blocks])
    return dims.sum(-1), dims, neurons


def search(solver: uvc.Solver, scores, steps: int) -> uvc.Solver:
    """``steps`` solver steps on fixed scores, 100 steps an epoch, no task gradient on the gates."""
    heads, dims, neurons = scores
    zero = np.zeros((solver.spec.depth, 2))
    for t in range(steps):
        solver.sample_gates(t / 100)
        solver.step(heads, dims, neurons, zero, lr=1e-3, epoch=t / 100)
    return solver


def fixed_plans(spec: uvc.ViTSpec) -> dict[str, uvc.ArchPlan]:
    """Every other block skipped; half the heads and half the neurons everywhere."""
    dense = uvc.ArchPlan.dense(spec)
    skip = tuple(uvc.LayerPlan(l.heads, l.v_index, l.neurons, l.tokens, attn=i % 2 == 0, mlp=i % 2 == 0)
                 if i % 2 == 0 else uvc.LayerPlan((), (), (), l.tokens, attn=False, mlp=False)
                 for i, l in enumerate(dense.layers))
    h, m = max(1, spec.num_heads // 2), max(1, spec.mlp_hidden // 2)
    halved = tuple(uvc.LayerPlan(tuple(range(h)), tuple(tuple(range(spec.v_head_dim)) for _ in range(h)),
                                 tuple(range(m)), l.tokens) for l in dense.layers)
    return {"skip_half": uvc.ArchPlan(spec, skip), "halved": uvc.ArchPlan(spec, halved)}


def get_table(name: str, spec, config, batch_size: int, threads: int, repeats: int, folder: Path, device: str,
              dtype: str) -> dict:
    """The profile of ``spec`` at ``batch_size`` on ``device`` in ``dtype`` (cached per model,
    batch, threads, device and dtype; a cached table of an older format is profiled again)."""
    path = folder / (f"{name}_b{batch_size}_t{threads}_{device.replace(':', '')}"
                     + ("" if dtype == "float32" else f"_{dtype}") + ".json")
    if path.exists() and (cached := load_table(path))["format"] == TABLE_FORMAT:
        return cached
    t = profile(spec, device=device, dtype=dtype, batch_size=batch_size, threads=threads, repeats=repeats,
                config=config)
    folder.mkdir(parents=True, exist_ok=True)
    save_table(t, path)
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224", help="'demo' or a timm model name (built offline)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="table and measurement batch sizes")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1500, help="solver steps per search")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="where the tables are profiled and the plans timed: cpu, cuda[:N]")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="of the weights and inputs timed")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="the demo at batch 1 and 4, budget 0.8, 300 steps, 3 repeats, "
                   "1 thread")
    p.add_argument("--out", help="JSON path (default benchmarks/results/latency_budget_<model>[_<device>_<dtype>].json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch_sizes, args.steps, args.repeats, args.budget, args.threads = "demo", [1, 4], 300, 3, 0.8, 1
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        p.error(f"--device {args.device}: expected cpu, or cuda[:N] where torch sees a CUDA device "
                f"(here: {'yes' if torch.cuda.is_available() else 'none'})")
    if args.dtype == "float16" and args.device == "cpu":
        p.error("--dtype float16: refused on the CPU (not what CPUs deploy); float32 or bfloat16 there")
    torch.manual_seed(0)
    model, _ = load_model(args.model)
    model.eval()
    spec, config = spec_from_model(model), model_config(model)
    folder = Path(args.out).parent / "latency_tables" if args.out else RESULTS / "latency_tables"
    tables = {b: uvc.LatencyTable(get_table(args.model, spec, config, b, args.threads, max(args.repeats, 3), folder,
                                            args.device, args.dtype),
                                  source=f"{args.model} batch {b} {args.device} {args.dtype}") for b in args.batch_sizes}
    scores = column_scores(model)
    plans: dict[str, uvc.ArchPlan] = {}
    macs = search(uvc.Solver(spec, args.budget, warmup_epochs=0.1, seed=0), scores, args.steps)
    plans["macs"] = macs.plan()
    if min(spec.v_head_dim, spec.mlp_hidden) > 32:
        plans["macs_round32"] = macs.plan(round_to=32)
    for b, t in tables.items():
        plans[f"latency@{b}"] = search(uvc.Solver(spec, args.budget, latency=t, warmup_epochs=0.1, seed=0),
                                       scores, args.steps).plan()
    plans.update(fixed_plans(spec))
    dd = dict(device=torch.device(args.device), dtype=DTYPES[args.dtype])
    slim = {"dense": SlimViT.from_timm(model, uvc.ArchPlan.dense(spec)).to(**dd)}
    slim.update({name: SlimViT.from_timm(model, plan).to(**dd) for name, plan in plans.items()})
    measured = compare_latency(slim, (spec.in_channels, *spec.image_size), args.batch_sizes, threads=args.threads,
                               repeats=args.repeats, device=args.device)
    dense_macs = uvc.count(spec).macs
    rows = []
    for name, plan in plans.items():
        row = {"plan": name, "macs_ratio": uvc.count(spec, plan).macs / dense_macs,
               "predicted_ratio": {str(b): t.predict(plan) / t.dense_ms for b, t in tables.items()},
               "measured_ratio": {str(b): measured[name][b]["ratio"] for b in args.batch_sizes},
               "measured_ms": {str(b): measured[name][b]["median_ms"] for b in args.batch_sizes},
               "kept": {"heads": [len(l.heads) for l in plan.layers], "v_dims": [l.v_dim for l in plan.layers],
                        "neurons": [len(l.neurons) for l in plan.layers],
                        "parts": [[l.attn, l.mlp] for l in plan.layers]}}
        rows.append(row)
    bs = args.batch_sizes
    where = f"CPU, {args.threads} threads" if args.device == "cpu" else args.device
    print(f"{args.model}, {where}, {args.dtype}, budget {args.budget}; dense ms: "
          + ", ".join(f"{measured['dense'][b]['median_ms']:.2f} @ {b}" for b in bs))
    print(text_table(["plan", "MACs ratio"] + [f"predicted @ {b}" for b in bs] + [f"measured @ {b}" for b in bs],
                     [[r["plan"], f"{r['macs_ratio']:.3f}"] + [f"{r['predicted_ratio'][str(b)]:.3f}" for b in bs]
                      + [f"{r['measured_ratio'][str(b)]:.3f}" for b in bs] for r in rows]))
    target = args.budget + 0.05
    for b in bs:
        got = next(r for r in rows if r["plan"] == f"latency@{b}")["measured_ratio"][str(b)]
        verdict = "met" if got <= target else "MISSED"
        print(f"target: latency@{b} measures <= {target:.2f} of dense at batch {b}: {got:.3f} ({verdict})")
    suffix = "" if (args.device, args.dtype) == ("cpu", "float32") else f"_{args.device.replace(':', '')}_{args.dtype}"
    out = Path(args.out) if args.out else RESULTS / f"latency_budget_{args.model}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "device": args.device, "dtype": args.dtype,
                               "threads": args.threads, "budget": args.budget,
                               "batch_sizes": bs, "steps": args.steps, "repeats": args.repeats,
                               "dense_ms": {str(b): measured["dense"][b]["median_ms"] for b in bs},
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

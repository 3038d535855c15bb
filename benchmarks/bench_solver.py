"""Cost of one `uvc.Solver.step` for DeiT-Base (12 layers × 12 heads × 64 value dims, 3072
neurons: ~46 000 group scores per step) from Python, next to a trivial Python call and a
numpy ufunc call measured in the same run.

Two search rows: the same scores every step, and scores that move as a model's weights do
under the optimizer, which moves the selection threshold's rank as in training: two score
sets, the second the first × (1 + 0.1 % noise) per score, taken in turn (two sets rather than
a long run of them: in training a step's scores are fresh in the cache, just computed).

    python benchmarks/bench_solver.py [--repeats 7] [--number 2000]

Prints a table and writes benchmarks/results/solver.json. Each figure is the median over
``--repeats`` timings of ``--number`` back-to-back calls, in microseconds per call.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import uvc


# Issue 12's targets for one call.
TARGETS_US = {"Solver.sample_gates (DeiT-Base)": 1.0, "Solver.step during search (DeiT-Base), same scores": 60.0,
              "Solver.step during search (DeiT-Base), moving scores": 60.0}


def per_call_us(fn, number: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "solver.json"))
    args = parser.parse_args()

    spec = uvc.ViTSpec.from_name("deit_base_patch16_224")
    rng = np.random.default_rng(0)
    dims = rng.random((spec.depth, spec.num_heads, spec.v_head_dim)) + 0.1
    heads, neurons = dims.sum(-1), rng.random((spec.depth, spec.mlp_hidden)) + 0.1
    gate_grad = np.zeros((spec.depth, 2))

    moved_dims = dims * (1 + 1e-3 * rng.standard_normal(dims.shape))
    moved_neurons = neurons * (1 + 1e-3 * rng.standard_normal(neurons.shape))
    drifting = [(heads, dims, neurons), (moved_dims.sum(-1), moved_dims, moved_neurons)]

    def searching(score_sets):
        solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, seed=0)
        for i in range(300):  # reach a pruned state: about half of every kind selected
            solver.sample_gates(1.0)
            solver.step(*score_sets[i % len(score_sets)], gate_grad, lr=1e-4, epoch=1.0)
        return solver

    search, drift = searching([(heads, dims, neurons)]), searching(drifting)
    turn = iter(range(1 << 62))
    warm = uvc.Solver(spec, 0.5, warmup_epochs=5.0, seed=0)

    def trivial():
        pass

    a, b, c = np.ones(8), np.ones(8), np.empty(8)
    rows = [
        ("trivial Python call f()", per_call_us(trivial, args.number, args.repeats)),
        ("numpy ufunc np.add(a, b, out=c), 8 doubles", per_call_us(lambda: np.add(a, b, out=c), args.number, args.repeats)),
        ("Solver.sample_gates (DeiT-Base)", per_call_us(lambda: search.sample_gates(1.0), args.number, args.repeats)),
        ("Solver.step during warm-up (checks, copies, factors = 1)",
         per_call_us(lambda: warm.step(heads, dims, neurons, gate_grad, lr=1e-4, epoch=1.0), args.number, args.repeats)),
        ("Solver.step during search (DeiT-Base), same scores",
         per_call_us(lambda: search.step(heads, dims, neurons, gate_grad, lr=1e-4, epoch=1.0), args.number, args.repeats)),
        ("Solver.step during search (DeiT-Base), moving scores",
         per_call_us(lambda: drift.step(*drifting[next(turn) % 2], gate_grad, lr=1e-4, epoch=1.0),
                     args.number, args.repeats)),
    ]
    stats = search.stats()
    width = max(len(name) for name, _ in rows)
    print(f"{'call':<{width}}  µs/call  target")
    for name, us in rows:
        target = TARGETS_US.get(name)
        mark = "" if target is None else f"≤ {target:g} µs: {'met' if us <= target else 'MISSED'}"
        print(f"{name:<{width}}  {us:8.2f}  {mark}")
    print(f"(state during the search rows: plan {stats['plan_ratio']:.3f} of the dense MACs, z = {stats['z']:.2f})")

    result = {
        "benchmark": "solver step, DeiT-Base", "unit": "microseconds per call (median of repeats)",
        "repeats": args.repeats, "number": args.number,
        "rows": [{"call": name, "us": round(us, 3), "target_us": TARGETS_US.get(name)} for name, us in rows],
        "scores_per_step": int(heads.size + dims.size + neurons.size),
        "plan_ratio": stats["plan_ratio"],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

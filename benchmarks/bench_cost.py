"""Cost of the cost model from Python, next to a trivial Python call and a numpy ufunc call.

    python benchmarks/bench_cost.py

Target (issue 2): relaxed cost + gradient for DeiT-Base under 10 µs per call.
"""
import numpy as np

import uvc
from uvc.cost import expected_cost, relaxed_inputs

from common import per_call, report


def main() -> None:
    spec = uvc.ViTSpec.from_name("deit_base_patch16_224")
    plan = uvc.random_plan(spec, np.random.default_rng(0))
    counts = plan.counts
    x = relaxed_inputs(spec, heads=9.5, v_dim=40.0, neurons=2000.0, attn_gate=0.7, mlp_gate=0.8)
    grad = np.empty_like(x)
    small = np.ones(12)
    conv = uvc.CONVENTIONS["uvc"]

    def noop():
        return None

    rows = [
        ("python: empty function call", per_call(noop)),
        ("numpy: np.multiply(a, 1.0, out=a), 12 doubles", per_call(lambda: np.multiply(small, 1.0, out=small))),
        ("uvc: expected_cost + gradient, DeiT-B", per_call(lambda: expected_cost(spec, x, grad, conv))),
        ("uvc: exact count with breakdown, DeiT-B", per_call(lambda: uvc.cost._count_counts(spec, counts, conv))),
        ("uvc: count(spec, plan) incl. plan encoding", per_call(lambda: uvc.count(spec, plan), number=2000)),
    ]
    data = report("cost", rows, {"target_us": {"uvc: expected_cost + gradient, DeiT-B": 10.0}})
    got = data["us_per_call"]["uvc: expected_cost + gradient, DeiT-B"]
    print(f"\nrelaxed cost + gradient: {got:.2f} µs per call (target < 10 µs): {'met' if got < 10 else 'MISSED'}")


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmark scripts: best-of-repeats per-call time, a table, JSON; and,
for the benchmarks that compare against Torch-Pruning (bench_prune, bench_quality), its global
pruning of a timm ViT at a bisected ratio, and seeded calibration batches."""
from __future__ import annotations

import copy
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def per_call(fn: Callable[[], object], *, number: int = 20000, repeat: int = 7) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``number`` calls (the least disturbed
    run on a shared, noisy machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def report(name: str, rows: list[tuple[str, float]], extra: dict | None = None) -> dict:
    """Prints a table of per-call times (µs) and writes benchmarks/results/NAME.json."""
    width = max(len(r[0]) for r in rows)
    print(f"{'call'.ljust(width)}  µs/call")
    print(f"{'-' * width}  -------")
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds * 1e6:7.3f}")
    data = {"benchmark": name, "python": sys.version.split()[0], "machine": platform.machine(),
            "us_per_call": {label: seconds * 1e6 for label, seconds in rows}} | (extra or {})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    return data


TP_INSTALL = 'pip install "uvc[bench]"'


def require_torch_pruning(parser, rows) -> None:
    """Stops (``parser.error``) when a row named tp_* is asked for and Torch-Pruning does not import."""
    tp_rows = [r for r in rows if r.startswith("tp_")]
    if not tp_rows:
        return
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        parser.error(f"--rows {' '.join(tp_rows)}: needs Torch-Pruning, which is not installed: {TP_INSTALL}")


def calibration_batches(images: int, spec, seed: int = 0) -> list:
    """A seeded subset of ``images`` Fashion-MNIST training images in batches of at most 256
    (fixed order, no shuffle beyond the subset's), shaped for ``spec``."""
    from uvc.torch.data import make_loader
    return list(make_loader("fashion-mnist", "train", min(256, images), subset=images, seed=seed,
                            image_size=spec.image_size, in_chans=spec.in_channels).batches(0))


def tp_prune(model, ratio: float, kind: str, calibration):
    """Torch-Pruning's MetaPruner on heads and MLP neurons only (the residual width stays); None
    when it removed every head of a layer (timm's Attention cannot run without one)."""
    import torch
    import torch_pruning as tp
    m = copy.deepcopy(model)
    x = calibration[0][0][:1]
    imp = tp.importance.GroupMagnitudeImportance(p=2) if kind == "l2" else tp.importance.GroupTaylorImportance()
    ignored = [m.head, m.patch_embed.proj] + [b.attn.proj for b in m.blocks] + [b.mlp.fc2 for b in m.blocks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cls_token / pos_embed: not pruned, since the residual width stays
        # Global head pruning past half the heads empties some layer of this model (timm's
        # Attention cannot run without a head): the head ratio stops at 0.5, the neurons go on.
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                      ignored_layers=ignored, num_heads={b.attn.qkv: b.attn.num_heads for b in m.blocks},
                                      prune_num_heads=True, prune_head_dims=False,
                                      head_pruning_ratio=min(ratio, 0.5))
    if kind == "taylor":
        m.zero_grad()
        for xb, yb in calibration:
            torch.nn.functional.cross_entropy(m(xb), yb).backward()
    pruner.step()
    if any(pruner.num_heads[b.attn.qkv] == 0 for b in m.blocks):
        return None
    for b in m.blocks:  # timm's Attention reads these in forward
        a = b.attn
        a.num_heads = pruner.num_heads[a.qkv]
        a.attn_dim = a.qkv.out_features // 3
        a.head_dim = a.attn_dim // a.num_heads
    m.zero_grad(set_to_none=True)
    return m.eval()


def tp_at_budget(model, budget: float, kind: str, calibration, dense_macs: int):
    """The largest Torch-Pruning model at or below ``budget`` of the dense MACs (ratio bisected)."""
    from uvc.torch import count_macs
    x = calibration[0][0][:1]
    lo, hi, best = 0.0, 1.0, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = tp_prune(model, mid, kind, calibration)
        if m is None:  # pruned too far
            hi = mid
        elif count_macs(m, x)["macs"] <= budget * dense_macs:
            hi, best = mid, m
        else:
            lo = mid
    if best is None:
        raise ValueError(f"Torch-Pruning ({kind}) reaches no model at {budget} of the MACs with a head in every layer")
    return best

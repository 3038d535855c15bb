"""One-shot compression without fine-tuning, side by side on the shipped demo model: uvc prune
(with and without least-squares reconstruction) against Torch-Pruning's one-shot global L2
magnitude and Taylor pruning of heads and MLP neurons, at the same MACs and on the same
calibration images.

Every row: top-1 on the test images, MACs ratio by one counter on the pruned model
(`uvc.torch.count_macs`, everything counted: the fvcore convention), parameters and the time
the compression took. uvc prunes to the budget under the fvcore convention; Torch-Pruning's
ratio is bisected to the largest model at or below the same MACs.

    python benchmarks/bench_prune.py [--budgets 0.7 0.5 0.3] [--rows ...] [--calibration 1024]
    python benchmarks/bench_prune.py --smoke      # a few images per row (CI)

Prints a table and writes benchmarks/results/prune.json; each finished row is cached there
(keyed by its settings), so a run can be resumed or split with --rows / --budgets.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch

from uvc.torch import count_macs
from uvc.torch.data import make_loader
from uvc.torch.pipeline import load_model
from uvc.torch.oneshot import prune
from uvc.torch.train import evaluate

ROWS = ("uvc_activation", "uvc_activation_ls", "uvc_taylor_ls", "tp_l2", "tp_taylor")
LABELS = {"uvc_activation": "uvc prune, activation scores, no reconstruction",
          "uvc_activation_ls": "uvc prune, activation scores + least squares",
          "uvc_taylor_ls": "uvc prune, Taylor scores + least squares",
          "tp_l2": "Torch-Pruning one-shot, global L2 magnitude", "tp_taylor": "Torch-Pruning one-shot, global Taylor"}


def tp_prune(model, ratio: float, kind: str, calibration):
    """Torch-Pruning's MetaPruner on heads and MLP neurons only (the residual width stays); None
    when it removed every head of a layer (timm's Attention cannot run without one)."""
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


def run_row(row: str, budget: float, model, calibration, test, dense_macs: int, images: int) -> dict:
    start = time.perf_counter()
    if row.startswith("uvc"):
        criterion = "taylor" if "taylor" in row else "activation"
        pruned = prune(model, budget, calibration, criterion=criterion, images=images,
                       reconstruct_weights=row.endswith("_ls"), convention="fvcore", progress=False)
    else:
        pruned = tp_at_budget(model, budget, row[3:], calibration, dense_macs)
    seconds = time.perf_counter() - start
    x = calibration[0][0][:1]
    return {"row": row, "budget": budget, "acc": evaluate(pruned, test, "cpu"),
            "ratio": count_macs(pruned, x)["macs"] / dense_macs,
            "params": sum(p.numel() for p in pruned.parameters()), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--calibration", type=int, default=1024, help="training images to score and fit on")
    parser.add_argument("--eval-subset", type=int, help="test images (default all 10 000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="64 calibration and 200 test images, budget 0.5")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune.json"))
    args = parser.parse_args()
    if args.smoke:
        args.budgets, args.calibration, args.eval_subset = [0.5], 64, 200
        args.out = str(Path(args.out).with_name("prune_smoke.json"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model("demo")
    model.eval()
    spec_kw = dict(seed=0, image_size=(28, 28), in_chans=1)
    calibration = [b for b in make_loader("fashion-mnist", "train", min(256, args.calibration),
                                          subset=args.calibration, **spec_kw).batches(0)]
    test = make_loader("fashion-mnist", "test", 500, subset=args.eval_subset, **spec_kw)
    dense_macs = count_macs(model, calibration[0][0][:1])["macs"]
    out = Path(args.out)
    cache = json.loads(out.read_text()) if out.exists() else {}
    cache.setdefault("dense", {"acc": evaluate(model, test, "cpu"), "ratio": 1.0,
                               "params": sum(p.numel() for p in model.parameters())})
    key_of = lambda row, budget: f"{row}|{budget}|cal{args.calibration}|eval{args.eval_subset}"  # noqa: E731
    for budget in args.budgets:
        for row in args.rows:
            key = key_of(row, budget)
            if key not in cache:
                cache[key] = run_row(row, budget, model, calibration, test, dense_macs, args.calibration)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(cache, indent=1) + "\n")
    d = cache["dense"]
    print(f"demo model: {d['acc']:.2f} % dense; {args.calibration} calibration images; "
          f"test images: {args.eval_subset or 10000}; MACs by uvc.torch.count_macs")
    print(f"{'budget':>6}  {'method':<48} {'top-1 %':>8} {'MACs ratio':>10} {'params':>8} {'time s':>7}")
    for budget in args.budgets:
        for row in args.rows:
            r = cache[key_of(row, budget)]
            print(f"{budget:>6}  {LABELS[row]:<48} {r['acc']:>8.2f} {r['ratio']:>10.3f} {r['params']:>8} "
                  f"{r['seconds']:>7.1f}")
    out.write_text(json.dumps(cache, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

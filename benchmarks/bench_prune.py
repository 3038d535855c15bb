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
import json
import time
from pathlib import Path

import torch

from uvc.torch import count_macs
from uvc.torch.data import make_loader
from uvc.torch.introspect import spec_from_model
from uvc.torch.pipeline import load_model
from uvc.torch.oneshot import prune
from uvc.torch.train import evaluate

from common import calibration_batches, require_torch_pruning, tp_at_budget

ROWS = ("uvc_activation", "uvc_activation_ls", "uvc_taylor_ls", "tp_l2", "tp_taylor")
LABELS = {"uvc_activation": "uvc prune, activation scores, no reconstruction",
          "uvc_activation_ls": "uvc prune, activation scores + least squares",
          "uvc_taylor_ls": "uvc prune, Taylor scores + least squares",
          "tp_l2": "Torch-Pruning one-shot, global L2 magnitude", "tp_taylor": "Torch-Pruning one-shot, global Taylor"}


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
    require_torch_pruning(parser, args.rows)
    if args.smoke:
        args.budgets, args.calibration, args.eval_subset = [0.5], 64, 200
        args.out = str(Path(args.out).with_name("prune_smoke.json"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model("demo")
    model.eval()
    spec_kw = dict(seed=0, image_size=(28, 28), in_chans=1)
    calibration = calibration_batches(args.calibration, spec_from_model(model))
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

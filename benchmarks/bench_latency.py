"""Measured CPU latency of compressed models against the dense one they came from.

    python benchmarks/bench_latency.py                          # the demo's dense model vs runs/demo/model
    python benchmarks/bench_latency.py runs/demo/model runs/demo_tokens/model --batch-sizes 1 64 256

The first model (``--dense``, default the shipped demo ViT) is the reference; all models are
timed interleaved in one run (so the machine's noise hits them alike), on random inputs, in
eval mode under ``torch.inference_mode``. Prints median ms per batch and the ratio to the
dense model per batch size, and writes benchmarks/results/latency.json.
Target (issue 4): the 50 % MACs demo model at batch 64 at most 0.6 of the dense latency.
"""
import argparse
import json

import torch

from uvc.report import table
from uvc.torch.latency import compare_latency
from uvc.torch.pipeline import describe, load_model

from common import RESULTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["runs/demo/model"], help="folders written by uvc.torch.save")
    p.add_argument("--dense", default="demo", help="the reference: 'demo' or an exported folder")
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()

    sources = [args.dense] + args.models
    models, macs = {}, {}
    for source in sources:
        model, _ = load_model(source)
        models[source] = model.eval()
        info = describe(model)
        macs[source] = info["macs"]
        spec = info["plan"].spec
    shape = (spec.in_channels, *spec.image_size)
    result = compare_latency(models, shape, args.batch_sizes, repeats=args.repeats, threads=args.threads)

    header = ["model", "MACs ratio"] + [f"ms @ {b}" for b in args.batch_sizes] + [f"ratio @ {b}" for b in args.batch_sizes]
    rows = [[name, f"{macs[name] / macs[args.dense]:.3f}"]
            + [f"{result[name][b]['median_ms']:.3f}" for b in args.batch_sizes]
            + [f"{result[name][b]['ratio']:.3f}" for b in args.batch_sizes] for name in sources]
    print(table(header, rows))

    data = {"benchmark": "latency", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "models": {name: {"macs": macs[name], "macs_ratio": macs[name] / macs[args.dense],
                              "latency": {str(b): result[name][b] for b in args.batch_sizes}} for name in sources}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()

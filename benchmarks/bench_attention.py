"""Attention with a value width below the query/key width: which way is fastest?

A pruned head keeps its q/k width and fewer value dims. `uvc.torch.SlimAttention` runs such a
head through SDPA with v zero-padded to the q/k width and the output sliced back (identical
values), because torch's SDPA leaves its fused kernel when v is narrower. This times the
attention op alone (softmax(q kᵀ/√d) v on random tensors; no projections), four ways,
interleaved in one run, medians over ``--repeats`` calls after warm-up:

  sdpa        F.scaled_dot_product_attention(q, k, v) on the narrow v (uvc before 2026-12-06)
  padded      the same with v padded to the q/k width, the output sliced (`uvc.torch.slim.attend`)
  explicit    (q·scale) @ kᵀ, softmax, @ v (`attend(fused=False)`, what counters see)
  sdpa_full   SDPA with a full-width v: the floor a narrow v could reach

    python benchmarks/bench_attention.py [--threads 2] [--device cpu] [--dtype float32]
    python benchmarks/bench_attention.py --smoke     # one shape, a few calls (CI)

Shapes (heads × q/k dim, v dim, batch, tokens): the demo model's (4 × 16), the deep model's
(3 × 16) and DeiT-Small's (6 × 64) with the value widths pruned plans keep. Prints a table and
writes benchmarks/results/attention.json (attention_smoke.json with --smoke; or --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from uvc.report import table
from uvc.torch.slim import attend

from common import RESULTS

# (label, heads, q/k dim, v dim, batch, tokens)
SHAPES = (("demo", 4, 16, 12, 64, 50), ("demo", 4, 16, 4, 64, 50), ("demo", 4, 16, 12, 1, 50),
          ("deep", 3, 16, 4, 64, 50), ("deep", 3, 16, 12, 64, 50), ("deep", 3, 16, 12, 1, 50),
          ("deit_s", 6, 64, 48, 16, 197), ("deit_s", 6, 64, 48, 1, 197))
PATHS = ("sdpa", "padded", "explicit", "sdpa_full")


def attention(q, k, v, path: str):
    if path in ("padded", "explicit"):
        return attend(q, k, v, q.shape[-1] ** -0.5, fused=path == "padded")
    return F.scaled_dot_product_attention(q, k, v)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--smoke", action="store_true", help="the first shape, 3 calls each")
    p.add_argument("--out", help="the JSON to write (default benchmarks/results/attention[_smoke].json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes, repeats = (SHAPES[:1], 3) if args.smoke else (SHAPES, args.repeats)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    rows, out = [], []
    with torch.inference_mode():
        for label, h, qd, vd, b, n in shapes:
            q, k = (torch.randn(b, h, n, qd, generator=gen, device=device).to(dtype) for _ in range(2))
            v = torch.randn(b, h, n, vd, generator=gen, device=device).to(dtype)
            v_full = torch.randn(b, h, n, qd, generator=gen, device=device).to(dtype)
            inputs = {path: (q, k, v_full if path == "sdpa_full" else v) for path in PATHS}
            # The padded path must be the explicit one's values before its time means anything.
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(attention(q, k, v, "padded"), attention(q, k, v, "explicit"), atol=tol,
                                       rtol=tol)
            times = {path: [] for path in PATHS}
            for i in range(3 + repeats):  # 3 untimed warm-up rounds, then every path in turn
                for path in PATHS:
                    sync()
                    t0 = time.perf_counter()
                    attention(*inputs[path], path)
                    sync()
                    if i >= 3:
                        times[path].append(time.perf_counter() - t0)
            ms = {path: statistics.median(t) * 1e3 for path, t in times.items()}
            best = min(("sdpa", "padded", "explicit"), key=ms.get)
            out.append({"model": label, "heads": h, "qk_dim": qd, "v_dim": vd, "batch": b, "tokens": n, "ms": ms,
                        "fastest": best})
            rows.append([f"{label}: {h} × {qd}, v {vd}, batch {b}, {n} tokens"] + [f"{ms[p]:.3f}" for p in PATHS]
                        + [best])
    print(f"attention op, median ms over {repeats} interleaved calls; {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(["shape"] + [f"{p} ms" for p in PATHS] + ["fastest (narrow v)"], rows))
    data = {"benchmark": "attention", "torch": torch.__version__, "device": args.device, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": out}
    path = Path(args.out) if args.out else RESULTS / ("attention_smoke.json" if args.smoke else "attention.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()

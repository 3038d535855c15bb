"""`uvc demo` and `uvc evaluate`: the whole pipeline on the shipped Fashion-MNIST ViT, and
side-by-side evaluation of models (accuracy, MACs, parameters, measured CPU latency)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..report import cost_table, table
from .data import make_loader
from .pipeline import compress, describe, finetune, load_model
from .train import evaluate

__all__ = ["run_demo", "evaluate_models"]


def evaluate_models(sources: list[str], *, data: str = "fashion-mnist", data_dir=None, eval_subset=None,
                    batch_sizes=(1, 64), json_path=None, names: list[str] | None = None, threads: int | None = None) -> list[dict]:
    """Evaluates each model on the test split and measures their CPU latency interleaved
    (so machine noise hits all alike). Prints a table; returns one dict per model."""
    from .latency import compare_latency
    names = names or sources
    models, rows = {}, []
    for name, source in zip(names, sources):
        model, _ = load_model(source)
        model.eval()
        info = describe(model)
        spec = info["plan"].spec
        loader = make_loader(data, "test", 500, subset=eval_subset, image_size=spec.image_size,
                             in_chans=spec.in_channels, data_dir=data_dir)
        info["acc"] = evaluate(model, loader, torch.device("cpu"))
        models[name] = model
        rows.append({"name": name, **info})
    shape = (spec.in_channels, *spec.image_size)
    latency = compare_latency(models, shape, batch_sizes, threads=threads)
    dense = rows[0]
    out = []
    for r in rows:
        lat = latency[r["name"]]
        entry = {"model": r["name"], "acc": r["acc"], "macs": r["macs"], "fvcore_macs": r["fvcore_macs"],
                 "macs_ratio": r["macs"] / dense["macs"], "params": r["params"],
                 "latency_ms": {str(b): lat[b]["median_ms"] for b in batch_sizes},
                 "latency_ratio": {str(b): lat[b]["ratio"] for b in batch_sizes}}
        out.append(entry)
    header = ["model", "top-1 %", "MACs (M)", "MACs ratio", "params (k)"] + [
        f"ms @ batch {b}" for b in batch_sizes] + [f"latency ratio @ {b}" for b in batch_sizes]
    print(table(header, [[e["model"], f"{e['acc']:.2f}", f"{e['macs'] / 1e6:.2f}", f"{e['macs_ratio']:.3f}",
                          f"{e['params'] / 1e3:.1f}"] + [f"{e['latency_ms'][str(b)]:.2f}" for b in batch_sizes]
                         + [f"{e['latency_ratio'][str(b)]:.3f}" for b in batch_sizes] for e in out]))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return out


def run_demo(*, budget: float = 0.5, search_epochs: int = 4, finetune_epochs: int = 4, subset: int = 20000,
             output_dir: str = "runs/demo", seed: int = 0, device: str | None = None, tokens: bool = False,
             budget_latency: float | None = None, latency_batch_size: int = 1, gate_granularity: str = "block",
             **_) -> dict:
    """Compresses the shipped ViT to ``budget`` of its MACs: search (stage 1) on ``subset``
    training images per epoch, export, fine-tune (stage 2), then evaluate against the dense
    model on the full test set. ``tokens``: also learn the tokens each block keeps.
    ``budget_latency``: instead, keep that fraction of the dense CPU latency, priced by a table
    profiled first on this machine at ``latency_batch_size`` (`uvc.torch.profile`).
    ``gate_granularity``: "block" (one skip gate per block) or "part" (MHSA and MLP apart).
    Writes everything under ``output_dir``."""
    from ..plots import plot_architecture
    start = time.time()
    out = Path(output_dir)
    common = dict(data="fashion-mnist", subset=subset, seed=seed, device=device or "cpu", train_batch_size=128,
                  distillation_type="soft", distillation_alpha=0.5, distillation_tau=1.0, checkpoint_every=200,
                  output_dir=str(out))
    what = "heads, value dims, neurons, block skips and tokens" if tokens else "heads, value dims, neurons and block skips"
    latency = {}
    if budget_latency is not None:
        from .profile import profile, save_table
        out.mkdir(parents=True, exist_ok=True)
        print(f"[uvc demo] profiling the demo model's block parts on the CPU at batch {latency_batch_size}")
        save_table(profile(load_model("demo")[0], batch_size=latency_batch_size), out / "latency.json")
        latency = dict(budget_latency=budget_latency, latency_table=str(out / "latency.json"))
        print(f"[uvc demo] stage 1: searching {what} at {budget_latency:.0%} of the dense latency (batch "
              f"{latency_batch_size})")
    else:
        print(f"[uvc demo] stage 1: searching {what} at {budget:.0%} of the MACs")
    s1 = compress(model="demo", budget=budget, num_epochs=search_epochs, learning_rate=5e-4,
                  warmup_epochs=0.25, zlr_schedule=tuple(float(e) for e in range(1, search_epochs)),
                  prune_tokens=tokens, gate_granularity=gate_granularity, **latency, **common)
    print(f"[uvc demo] exported: {s1['ratio']:.1%} of the dense MACs, the plan fitted to the budget; top-1 "
          f"{s1['masked_acc']:.2f} % searched (masked), {s1['exported_acc']:.2f} % exported")
    if budget_latency is not None:
        print(f"[uvc demo] the table prices it at {s1['plan_ratio']:.1%} of the dense latency")
    # A plan above the budget is not called compressed to it (the pipeline has warned already).
    target = f"{budget_latency:.0%} latency" if budget_latency is not None else f"{budget:.0%}"
    label = f"uvc {target}" if s1["budget_met"] else f"uvc, {target} missed"
    print("[uvc demo] stage 2: fine-tuning the exported model with distillation from the dense one")
    finetune(model=str(out / "stage1_model"), teacher="demo", epochs=finetune_epochs, learning_rate=5e-4,
             weight_decay=0.05, **common)
    print("[uvc demo] evaluating on the 10 000 test images and timing on the CPU")
    results = evaluate_models(["demo", str(out / "model")], names=["dense", label],
                              json_path=str(out / "results.json"))
    compressed, _ = load_model(str(out / "model"))
    plan = compressed.plan
    from .. import cost
    print(cost_table(cost.count(plan.spec, plan), plan))
    title = f"uvc demo: {s1['ratio']:.0%} MACs" + (f", {s1['plan_ratio']:.0%} latency" if latency else "")
    print("[uvc demo] wrote", plot_architecture(plan, out / "architecture.png", title=title))
    print(f"[uvc demo] done in {time.time() - start:.0f} s; everything is in {out}/")
    return {"stage1": s1, "results": results}

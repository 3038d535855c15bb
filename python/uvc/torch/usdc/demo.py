"""`uvc demo --method usdc`: static, dynamic and static + dynamic compression of the shipped
Fashion-MNIST ViT at the same average MACs, compared at inference batch sizes 1, 8 and 256."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ...report import table
from ..pipeline import compress as uvc_compress, finetune as uvc_finetune, load_model
from .export import load as load_dynamic
from .pipeline import evaluate_batch_sizes, finetune, latency_on_data, search

__all__ = ["run_usdc_demo", "METHODS"]

# Rows of the results table: what each compresses and how its gates were trained.
METHODS = {
    "uvc": "static only (UVC primal-dual)",
    "static": "static only (USDC search)",
    "dynamic": "dynamic only (group gates)",
    "usdc": "static + dynamic (group gates)",
    "usdc_sample": "static + dynamic, sample-level gates",
    "usdc_mixed": "static + dynamic, mixed groups (half halving, half per sample)",
}
# How each dynamic method cuts its training batches (`uvc.usdc.GROUPINGS`).
GROUPING = {"dynamic": "halving", "usdc": "halving", "usdc_sample": "sample", "usdc_mixed": "mixed"}


def run_usdc_demo(*, target: float = 0.6, search_epochs: int = 2, finetune_epochs: int = 2, subset: int = 10000,
                  output_dir: str = "runs/usdc_demo", seed: int = 0, device: str | None = None,
                  methods: tuple[str, ...] = tuple(METHODS), batch_sizes: tuple[int, ...] = (1, 8, 256),
                  eval_subset: int | None = None, gamma: float = 100.0, budget_mode: str = "penalty",
                  static_target: float | None = 0.75, arch_lr: float = 0.1, gate_lr: float = 0.03,
                  gate_init: float = 2.0, **_) -> dict:
    """Compresses the shipped ViT to ``target`` of its MACs (gate networks included) with each
    of ``methods`` (keys of `METHODS`): stage 1 for ``search_epochs`` and stage 2 for
    ``finetune_epochs`` epochs of ``subset`` training images, then evaluates every model and the
    dense one on the test split (``eval_subset`` images, all when None) at each of
    ``batch_sizes``. ``static_target``: the static part's share of the MACs in static +
    dynamic runs (see `ResourceBudget`; None leaves the split to the search). Writes
    ``results.json`` and each run under ``output_dir``; a run whose ``model/`` is already there
    is evaluated again, not retrained (delete its folder to redo it)."""
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {sorted(METHODS)}, got {list(methods)}")
    start = time.time()
    out = Path(output_dir)
    common = dict(data="fashion-mnist", subset=subset, eval_subset=eval_subset, seed=seed, device=device or "cpu",
                  train_batch_size=128, distillation_type="soft", distillation_alpha=0.5, distillation_tau=1.0,
                  checkpoint_every=200)
    usdc = dict(target=target, gamma=gamma, budget_mode=budget_mode, gate_lr=gate_lr)
    gates = dict(gate_init=gate_init)
    folders = {"dense": "demo"}
    for method in methods:
        run = out / method
        folders[method] = str(run / "model")
        if (run / "model" / "arch.json").is_file():
            print(f"[uvc demo usdc] {method}: reusing {run / 'model'}", flush=True)
            continue
        print(f"[uvc demo usdc] {method}: {METHODS[method]} at {target:.0%} of the dense MACs", flush=True)
        if method in ("uvc", "static"):
            if method == "static":
                search(model="demo", num_epochs=search_epochs, learning_rate=5e-4, dynamic=False,
                       arch_lr=arch_lr, output_dir=str(run), **usdc, **common)
            else:
                uvc_compress(model="demo", budget=target, num_epochs=search_epochs, learning_rate=5e-4,
                             warmup_epochs=0.25, zlr_schedule=tuple(float(e) for e in range(1, search_epochs)),
                             output_dir=str(run), **common)
            uvc_finetune(model=str(run / "stage1_model"), teacher="demo", epochs=finetune_epochs, learning_rate=5e-4,
                         weight_decay=0.05, output_dir=str(run), **common)
        else:
            search(model="demo", num_epochs=search_epochs, learning_rate=5e-4, static=method != "dynamic",
                   grouping=GROUPING[method], static_target=static_target, arch_lr=arch_lr,
                   output_dir=str(run), **usdc, **gates, **common)
            finetune(model=str(run / "stage1_model"), teacher="demo", epochs=finetune_epochs, learning_rate=5e-4,
                     weight_decay=0.05, output_dir=str(run), **usdc, **common)
    print(f"[uvc demo usdc] evaluating at batch sizes {list(batch_sizes)} on the CPU", flush=True)
    results, models = {}, {}
    for name, folder in folders.items():
        model = load_model(folder)[0] if name in ("dense", "uvc", "static") else load_dynamic(folder)
        models[name] = model
        results[name] = evaluate_batch_sizes(model, batch_sizes, eval_subset=eval_subset, seed=seed)
        results[name]["params"] = sum(p.numel() for p in model.parameters())
        if name == "usdc":
            print(layer_table(model, results[name][max(batch_sizes)]["rates"]))
    for name, per_batch in latency_on_data(models, batch_sizes).items():
        for b, ms in per_batch.items():
            results[name][b].update(ms_per_batch=ms, ms_per_image=ms / b)
    print(results_table(results, batch_sizes))
    (out / "results.json").write_text(json.dumps({"target": target, "results": results}, indent=1))
    print(f"[uvc demo usdc] done in {time.time() - start:.0f} s; everything is in {out}/")
    return results


def results_table(results: dict, batch_sizes) -> str:
    """One row per model: accuracy, average MACs ratio and ms per image at each batch size,
    and the spread of accuracy over the batch sizes."""
    header = ["model", "params (k)"] + [f"top-1 % @{b}" for b in batch_sizes] + ["acc spread"] + [
        f"MACs @{b}" for b in batch_sizes] + [f"ms/img @{b}" for b in batch_sizes]
    rows = []
    for name, r in results.items():
        accs = [r[b]["acc"] for b in batch_sizes]
        rows.append([f"{name} ({METHODS.get(name, 'dense')})", f"{r['params'] / 1e3:.1f}"]
                    + [f"{a:.2f}" for a in accs] + [f"{max(accs) - min(accs):.2f}"]
                    + [f"{r[b]['ratio']:.3f}" for b in batch_sizes] + [f"{r[b]['ms_per_image']:.3f}" for b in batch_sizes])
    return table(header, rows)


def layer_table(model, rates) -> str:
    """Per layer of a `DynamicViT`: kept heads and neurons, the gate network, and how often
    the MHSA and MLP part ran (at the largest batch size)."""
    gates = dict(zip(model.slim.block_index, (g.kind for g in model.gates)))
    rows = []
    for l, layer in enumerate(model.plan.layers):
        rate = [("pruned" if math.isnan(v) else f"{v:.2f}") for v in np.asarray(rates)[l]]
        rows.append([l, len(layer.heads) if layer.attn else "pruned", len(layer.neurons) if layer.mlp else "pruned",
                     gates.get(l, "-")] + rate)
    return table(["layer", "heads", "neurons", "gate", "MHSA rate", "MLP rate"], rows)

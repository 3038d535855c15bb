"""`uvc demo --method usdc`: static, dynamic and static + dynamic compression of the shipped
Fashion-MNIST ViT at the same average MACs (or, with ``--budget-latency``, the same predicted
CPU latency), compared at inference batch sizes 1, 8 and 256."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ...latency import LatencyTable
from ...report import table
from ..pipeline import compress as uvc_compress, finetune as uvc_finetune, load_model
from .dynamic import DynamicViT
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
                  gate_init: float = 2.0, budget_latency: float | None = None, latency_batch_size: int = 1,
                  **_) -> dict:
    """Compresses the shipped ViT to ``target`` of its MACs (gate networks included) with each
    of ``methods`` (keys of `METHODS`), or with ``budget_latency`` to that fraction of its
    dense CPU latency, priced by a table profiled first on this machine at
    ``latency_batch_size`` (`uvc.torch.profile`; the gate networks are timed there too), each
    method then also run at the same fraction of the MACs (``<method>_macs``) beside it: stage 1
    for ``search_epochs`` and stage 2 for ``finetune_epochs`` epochs of ``subset`` training
    images, then evaluates every model and the dense one on the test split (``eval_subset``
    images, all when None) at each of ``batch_sizes``, timed interleaved. ``static_target``:
    the static part's share of the budget in static + dynamic runs (see `ResourceBudget`;
    None leaves the split to the search). Writes ``results.json`` and each run under
    ``output_dir``; a run whose ``model/`` is already there is evaluated again, not retrained
    (delete its folder to redo it), and so is the latency table."""
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
    # (row name, method, folder, USDC budget settings, UVC budget settings, what the budget counts)
    rows = [(m, m, out / m, usdc, dict(budget=target), f"{target:.0%} of the dense MACs") for m in methods]
    table = None
    if budget_latency is not None:
        from ..profile import profile, save_table
        path = out / "latency.json"
        if path.is_file():
            print(f"[uvc demo usdc] reusing the latency table {path}", flush=True)
        else:
            out.mkdir(parents=True, exist_ok=True)
            print(f"[uvc demo usdc] profiling the demo model's block parts on the CPU at batch {latency_batch_size}")
            save_table(profile(load_model("demo")[0], batch_size=latency_batch_size), path)
        table = LatencyTable.load(path)
        in_ms = dict(usdc, target=budget_latency, latency_table=str(path))
        where = f"{budget_latency:.0%} of the dense latency at batch {table.batch_size}"
        # Each method twice: its budget in ms, and the same fraction of the MACs beside it.
        rows = [(m, m, out / m, in_ms, dict(budget_latency=budget_latency, latency_table=str(path)), where)
                for m in methods] + [(f"{m}_macs", m, out / f"{m}_macs", dict(usdc, target=budget_latency),
                                      dict(budget=budget_latency), f"{budget_latency:.0%} of the dense MACs")
                                     for m in methods]
    folders = {"dense": ("dense", "demo")}
    for name, method, run, budget, uvc_budget, where in rows:
        folders[name] = (method, str(run / "model"))
        if (run / "model" / "arch.json").is_file():
            print(f"[uvc demo usdc] {name}: reusing {run / 'model'}", flush=True)
            continue
        print(f"[uvc demo usdc] {name}: {METHODS[method]} at {where}", flush=True)
        if method in ("uvc", "static"):
            if method == "static":
                search(model="demo", num_epochs=search_epochs, learning_rate=5e-4, dynamic=False,
                       arch_lr=arch_lr, output_dir=str(run), **budget, **common)
            else:
                uvc_compress(model="demo", **uvc_budget, num_epochs=search_epochs, learning_rate=5e-4,
                             warmup_epochs=0.25, zlr_schedule=tuple(float(e) for e in range(1, search_epochs)),
                             output_dir=str(run), **common)
            uvc_finetune(model=str(run / "stage1_model"), teacher="demo", epochs=finetune_epochs, learning_rate=5e-4,
                         weight_decay=0.05, output_dir=str(run), **common)
        else:
            search(model="demo", num_epochs=search_epochs, learning_rate=5e-4, static=method != "dynamic",
                   grouping=GROUPING[method], static_target=static_target, arch_lr=arch_lr,
                   output_dir=str(run), **budget, **gates, **common)
            finetune(model=str(run / "stage1_model"), teacher="demo", epochs=finetune_epochs, learning_rate=5e-4,
                     weight_decay=0.05, output_dir=str(run), **budget, **common)
    print(f"[uvc demo usdc] evaluating at batch sizes {list(batch_sizes)} on the CPU", flush=True)
    results, models = {}, {}
    for name, (method, folder) in folders.items():
        model = load_model(folder)[0] if method in ("dense", "uvc", "static") else load_dynamic(folder)
        models[name] = model
        results[name] = evaluate_batch_sizes(model, batch_sizes, eval_subset=eval_subset, seed=seed)
        results[name]["params"] = sum(p.numel() for p in model.parameters())
        kind = ("" if method == "dense" or table is None else ", MACs budget" if name.endswith("_macs")
                else ", latency budget")
        results[name]["label"] = METHODS.get(method, "dense") + kind
        if table is not None:
            # Rates at the table's batch size where evaluated there.
            rates_at = table.batch_size if table.batch_size in batch_sizes else max(batch_sizes)
            results[name]["predicted_ms_ratio"] = predicted_ratio(model, table, results[name][rates_at])
        if name == "usdc":
            print(layer_table(model, results[name][max(batch_sizes)]["rates"]))
    measured = latency_on_data(models, batch_sizes)
    for name, per_batch in measured.items():
        for b, ms in per_batch.items():
            results[name][b].update(ms_per_batch=ms, ms_per_image=ms / b, ms_ratio=ms / measured["dense"][b])
    print(results_table(results, batch_sizes))
    (out / "results.json").write_text(json.dumps({"target": target, "budget_latency": budget_latency,
                                                  "results": results}, indent=1))
    print(f"[uvc demo usdc] done in {time.time() - start:.0f} s; everything is in {out}/")
    return results


def predicted_ratio(model, table: LatencyTable, evaluated: dict) -> float:
    """The table's latency of ``model`` over its dense latency: a dynamic model's at the
    execution rates ``evaluated`` measured (gate networks timed now), a static one's plan."""
    from ..slim import SlimViT
    if isinstance(model, DynamicViT):
        return model.average_latency(table, rates=np.array(evaluated["rates"], dtype=float))["ratio"]
    return table.predict(model.plan) / table.dense_ms if isinstance(model, SlimViT) else 1.0


def results_table(results: dict, batch_sizes) -> str:
    """One row per model: accuracy, average MACs ratio, ms per image and measured latency over
    the dense model's at each batch size, the spread of accuracy over the batch sizes, and the
    latency table's ratio when there is one."""
    predicted = any("predicted_ms_ratio" in r for r in results.values())
    header = (["model", "params (k)"] + [f"top-1 % @{b}" for b in batch_sizes] + ["acc spread"]
              + [f"MACs @{b}" for b in batch_sizes] + [f"ms/img @{b}" for b in batch_sizes]
              + [f"ms ratio @{b}" for b in batch_sizes] + (["table's ms ratio"] if predicted else []))
    rows = []
    for name, r in results.items():
        accs = [r[b]["acc"] for b in batch_sizes]
        rows.append([f"{name} ({r['label']})", f"{r['params'] / 1e3:.1f}"]
                    + [f"{a:.2f}" for a in accs] + [f"{max(accs) - min(accs):.2f}"]
                    + [f"{r[b]['ratio']:.3f}" for b in batch_sizes] + [f"{r[b]['ms_per_image']:.3f}" for b in batch_sizes]
                    + [f"{r[b]['ms_ratio']:.3f}" for b in batch_sizes]
                    + ([f"{r['predicted_ms_ratio']:.3f}"] if predicted else []))
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

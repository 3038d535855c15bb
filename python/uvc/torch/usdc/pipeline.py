"""The two USDC stages and their evaluation as functions of keyword settings (defined, with
their defaults, in `uvc.settings`; the demo and the CLI call these), sharing the UVC pipeline's loaders, schedule, distillation and
training loop (checkpoints, exact resume, logs).

Stage 1 (`search`): static keep probabilities and dynamic group gates searched jointly under
the budget, with distillation from the dense teacher; the static part is pruned physically
and the best gate network of each layer kept (`DynamicViT`). Stage 2 (`finetune`): train that
model with its dynamic gates under the budget F(g).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ... import cost
from ...settings import USDC_FINETUNE, USDC_SEARCH
from ..data import make_loader
from ..introspect import spec_from_model
from ..pipeline import (_criterion, _jsonable, _loaders, _schedule, check_budget, load_model, setup_distributed,
                        timm_kwargs)
from ..slim import SlimViT
from ..train import evaluate, fit
from .dynamic import DynamicViT, USDCFinetune
from .export import load as load_dynamic, save as save_dynamic

__all__ = ["search", "finetune", "evaluate_batch_sizes", "latency_on_data", "SEARCH_KEYS"]

# Settings passed through to `USDCSearch`.
SEARCH_KEYS = ("static", "dynamic", "neuron_group_size", "gate_kinds", "gate_hidden", "gate_kernel", "gate_init",
               "keep_init", "tau", "grouping", "static_mode", "gamma", "budget_mode", "dual_lr", "static_target",
               "static_tau", "convention")

# What a checkpoint must share with the run that resumes it (the model and the budget).
RESUME_KEYS = {"search": ("model", "model_kwargs", "num_classes", "img_size", "target", "static_target", "convention",
                          "latency_table"),
               "finetune": ("model", "teacher", "model_kwargs", "num_classes", "img_size", "target", "convention",
                            "latency_table")}


def _latency(settings: dict, spec):
    """The latency table of a latency budget (None for a MACs budget), checked before training."""
    from ...latency import LatencyTable
    if settings["latency_table"] is None:
        return None
    return LatencyTable.load(settings["latency_table"]).check(spec)


def _check_exported(summary: dict, ratio: float, target: float, latency, stage: str, hint: str) -> None:
    """Adds whether the exported model meets ``target`` (`check_budget`; a miss warns), in MACs or
    in the latency table's ms."""
    if latency is None:
        summary.update(check_budget(ratio, target, stage, f"{hint} or allow more MACs (--target)"))
    else:
        summary.update(predicted_ms=ratio * latency.dense_ms, dense_predicted_ms=latency.dense_ms,
                       latency_table=latency.source,
                       **check_budget(ratio, target, stage, f"{hint} or allow more latency (--target)", unit="latency"))


def _optimizer(weights, arch, gates, settings) -> torch.optim.Optimizer:
    """AdamW on the weights; Adam without decay on the architecture logits (DARTS's betas)
    and on the gate networks."""
    groups = [{"params": weights, "lr": settings["learning_rate"], "weight_decay": settings["weight_decay"]}]
    if arch:
        groups.append({"params": arch, "lr": settings["arch_lr"], "weight_decay": 0.0, "betas": (0.5, 0.999)})
    if gates:
        groups.append({"params": gates, "lr": settings["gate_lr"], "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def _single_process(settings: dict) -> torch.device:
    device, _, world = setup_distributed(settings["device"])
    if world > 1:
        raise ValueError("the USDC stages run in one process; launch them without torchrun")
    return device


def search(**settings) -> dict:
    """Stage 1. Writes to ``output_dir``: ``stage1/`` (checkpoint, log.jsonl), ``plan.json``,
    ``stage1_model/`` (the `DynamicViT`, or a `SlimViT` without gates) and
    ``summary_stage1.json``. ``target``: wanted F (expected MACs over the dense MACs, gate
    networks included; with ``latency_table`` the table's ms over its dense ms). The summary says
    whether the exported model meets it (``budget_met``, ``plan_ratio``: its cost over the
    dense cost, averaged over the test images at the eval batch size when it has gates,
    ``budget_ratio``); a miss also warns (`BudgetMissWarning`).
    ``settings``: those of `uvc.settings.USDC_SEARCH`; the resolved ones go to settings.json."""
    from .search import USDCSearch
    settings = USDC_SEARCH.resolve(settings, source="usdc search")
    device = _single_process(settings)
    torch.manual_seed(settings["seed"])
    model, meta = load_model(settings["model"], settings["checkpoint"], **timm_kwargs(settings))
    model.to(device)
    teacher = copy.deepcopy(model).eval()
    spec = spec_from_model(model)
    latency = _latency(settings, spec)
    train, test = _loaders(spec, settings, 0, 1)
    kwargs = {k: settings[k] for k in SEARCH_KEYS if settings[k] is not None}
    epochs = settings["num_epochs"]
    usdc = USDCSearch(model, settings["target"], anneal_steps=epochs * len(train), seed=settings["seed"],
                      latency=latency, **kwargs)
    arch = [p for p in (usdc.arch.head_logits, usdc.arch.neuron_logits, usdc.arch.part_logits) if p is not None]
    gates = []
    if usdc.dynamic:
        arch += [g.alpha for g in usdc.arch.gates]
        gates = [p for g in usdc.arch.gates for p in g.options.parameters()]
    weights = [p for n, p in model.named_parameters() if not n.startswith("usdc.")]
    optimizer = _optimizer(weights, arch, gates, settings)
    scheduler = _schedule(optimizer, epochs * len(train), 0)
    base = _criterion(teacher, settings)
    out = Path(settings["output_dir"])
    fit(model, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
        criterion=lambda x, outputs, y: base(x, outputs, y) + usdc.resource_loss(), out_dir=out / "stage1",
        compressor=usdc, eval_loader=test, resume=settings["resume"], checkpoint_every=settings["checkpoint_every"],
        stop_after=settings["stop_after"], desc="usdc stage 1", config=_jsonable(settings),
        match=RESUME_KEYS["search"], progress=settings["progress"], on_start=lambda: USDC_SEARCH.save(settings, out))
    if settings["stop_after"] is not None and usdc.step_count < epochs * len(train):
        return {"stopped_at_step": usdc.step_count}
    model.eval()
    exported = usdc.export().to(device).eval()
    x, _ = next(test.batches(0))
    with torch.no_grad():
        diff = (model(x.to(device)) - exported(x.to(device))).abs().max().item()
    plan = usdc.plan()
    dense = cost.count(spec).macs
    dynamic = isinstance(exported, DynamicViT)
    if dynamic:
        exported.reset_stats()  # count the test images only
    summary = {"stage": 1, "target": settings["target"], "searched_acc": evaluate(model, test, device),
               "exported_acc": evaluate(exported, test, device), "max_abs_logit_diff": diff,
               "static_macs": cost.count(spec, plan).macs, "dense_macs": dense, **usdc.stats()}
    summary["static_ratio"] = summary["static_macs"] / dense
    conv = usdc.budget.convention
    if latency is not None:
        ratio = exported.average_latency(latency)["ratio"] if dynamic else latency.predict(plan) / latency.dense_ms
    elif dynamic:
        ratio = exported.average_macs(conv)["ratio"]
    else:
        ratio = cost.count(spec, plan, conv).macs / cost.count(spec, None, conv).macs
    _check_exported(summary, ratio, settings["target"], latency, "uvc usdc-search", "search longer (more --epochs)")
    plan.save(out / "plan.json")
    if dynamic:
        save_dynamic(exported, out / "stage1_model", meta=meta)
    else:
        from ..export import save as save_slim
        save_slim(exported, out / "stage1_model", meta=meta)
    (out / "summary_stage1.json").write_text(json.dumps(summary, indent=1))
    return summary


def finetune(**settings) -> dict:
    """Stage 2: fine-tune the `DynamicViT` in ``model`` (a folder written by `search`) with its
    group gates under the budget ``target`` and distillation from the dense ``teacher``.
    Writes ``stage2/`` and the final ``model/`` to ``output_dir``. The summary says whether the
    model's average MACs (or, with ``latency_table``, the table's ms at its execution rates) on
    the test images meet ``target`` (``budget_met``, as in `search`).
    ``settings``: those of `uvc.settings.USDC_FINETUNE`."""
    settings = USDC_FINETUNE.resolve(settings, source="usdc finetune")
    device = _single_process(settings)
    torch.manual_seed(settings["seed"])
    model = load_dynamic(settings["model"], device)
    meta = dict(model.slim.meta)
    teacher = None
    if settings["distillation_type"] != "none":
        teacher, _ = load_model(settings["teacher"], settings["teacher_checkpoint"], **timm_kwargs(settings))
        teacher.to(device).eval()
    latency = _latency(settings, model.spec)
    train, test = _loaders(model.spec, settings, 0, 1)
    keys = ("gamma", "budget_mode", "dual_lr", "convention")
    ft = USDCFinetune(model, settings["target"], latency=latency,
                      **{k: settings[k] for k in keys if settings[k] is not None})
    gate_params = list(model.gates.parameters())
    optimizer = _optimizer(list(model.slim.parameters()), [], gate_params, settings)
    epochs = settings["epochs"]
    scheduler = _schedule(optimizer, epochs * len(train), len(train) // 4)
    base = _criterion(teacher, settings)
    out = Path(settings["output_dir"])
    records = fit(model, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
                  criterion=lambda x, outputs, y: base(x, outputs, y) + ft.resource_loss(), out_dir=out / "stage2",
                  compressor=ft, eval_loader=test, resume=settings["resume"],
                  checkpoint_every=settings["checkpoint_every"], stop_after=settings["stop_after"],
                  desc="usdc stage 2", config=_jsonable(settings), match=RESUME_KEYS["finetune"],
                  progress=settings["progress"], on_start=lambda: USDC_FINETUNE.save(settings, out))
    model.eval()
    model.reset_stats()
    summary = {"stage": 2, "acc": evaluate(model, test, device), "epochs": epochs, "records": records,
               **model.average_macs(settings["convention"])}
    ratio = summary["ratio"] if latency is None else model.average_latency(latency)["ratio"]
    _check_exported(summary, ratio, settings["target"], latency, "uvc usdc-finetune", "train longer (more --epochs)")
    save_dynamic(model.eval(), out / "model", meta=meta)
    (out / "summary_stage2.json").write_text(json.dumps(summary, indent=1))
    return summary


def _spec(model):
    return model.spec if isinstance(model, (DynamicViT, SlimViT)) else spec_from_model(model)


@torch.inference_mode()
def evaluate_batch_sizes(model: torch.nn.Module, batch_sizes=(1, 8, 256), *, data: str = "fashion-mnist",
                         data_dir=None, eval_subset: int | None = None, seed: int = 0,
                         convention: str = "uvc") -> dict:
    """Accuracy and average executed MACs of ``model`` (a `DynamicViT`, a `SlimViT` or a timm
    ViT) on the test split (``eval_subset`` images of a ``seed``-shuffle, all when None) at
    each inference batch size.

    Returns ``{batch: {"acc": %, "macs": MACs per image (gate networks included), "ratio": to
    the dense model, "rates": per-layer execution rates (DynamicViT, else None)}}``. The same
    images in the same order at every batch size; a `DynamicViT` decides once per batch."""
    model = model.eval()
    dynamic = isinstance(model, DynamicViT)
    spec = _spec(model)
    dense = cost.count(spec, None, convention).macs
    static = None if dynamic else cost.count(spec, model.plan if isinstance(model, SlimViT) else None, convention).macs
    out = {}
    for b in batch_sizes:
        loader = make_loader(data, "test", b, seed=seed, subset=eval_subset, image_size=spec.image_size,
                             in_chans=spec.in_channels, data_dir=data_dir)
        if dynamic:
            model.reset_stats()
        correct = total = 0
        for x, y in loader.batches(0):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
        macs = model.average_macs(convention)["macs"] if dynamic else static
        out[b] = {"acc": 100.0 * correct / max(total, 1), "macs": macs, "ratio": macs / dense,
                  "rates": model.execution_rates().tolist() if dynamic else None}
    return out


@torch.inference_mode()
def latency_on_data(models: dict, batch_sizes=(1, 8, 256), *, images: int = 256, repeats: int = 3,
                    data: str = "fashion-mnist", data_dir=None, threads: int | None = None) -> dict:
    """Median wall time (ms) of one forward pass per model and batch size, on real test batches
    (a dynamic model's work depends on its input) of about ``images`` images per batch size,
    each timed ``repeats`` times, in eval and inference mode with ``threads`` CPU threads
    (torch's when None), as `uvc.torch.profile` times a table's parts. Models take turns batch by
    batch, so load changes on a shared machine hit all of them alike. Returns
    ``{name: {batch: ms}}``."""
    from ..latency import _measuring
    spec = _spec(next(iter(models.values())))
    out = {name: {} for name in models}
    batches = {}
    for b in batch_sizes:
        loader = make_loader(data, "test", b, image_size=spec.image_size, in_chans=spec.in_channels,
                             data_dir=data_dir)
        batches[b] = [x for _, (x, _) in zip(range(max(1, images // b)), loader.batches(0))]
    with _measuring(list(models.values()), threads):
        for b, xs in batches.items():
            times = {name: [] for name in models}
            for m in models.values():
                m(xs[0])
            for _ in range(repeats):
                for x in xs:
                    for name, m in models.items():
                        t0 = time.perf_counter()
                        m(x)
                        times[name].append(time.perf_counter() - t0)
            for name in models:
                out[name][b] = 1e3 * float(np.median(times[name]))
    return out

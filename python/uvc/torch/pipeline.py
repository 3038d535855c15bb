"""The two UVC stages and evaluation as functions of keyword settings (defined, with their
defaults, in `uvc.settings`); the CLI and the demo call these.

Stage 1 (`compress`): joint search of heads, value dims, neurons and block parts (and, with
``prune_tokens``, the tokens each block keeps) under the budget, with distillation from the
dense teacher, then export of the physically smaller model. Stage 2 (`finetune`): train that
fixed architecture, again with distillation.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .. import cost
from ..settings import COMPRESS, FINETUNE, PRUNE
from ..solver import DEFAULTS as SOLVER_DEFAULTS
from .compress import Compressor
from .data import make_loader
from .distill import DistillationLoss
from .export import load as load_slim, save as save_slim
from .introspect import spec_from_model
from .slim import SlimViT
from .train import evaluate, fit, is_main_process, unwrap

__all__ = ["load_model", "compress", "finetune", "prune", "describe", "setup_distributed", "check_budget",
           "BudgetMissWarning", "BUDGET_TOLERANCE", "UNDER_BUDGET", "note_under_budget", "ASSETS", "SHIPPED"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# The dense models shipped in ASSETS, by the name `load_model` takes: their asset file stem
# (<stem>.json, <stem>.safetensors; trained by scripts/train_dense.py --model <name>).
SHIPPED = {"demo": "fmnist_vit", "deep": "fmnist_vit_deep"}

# A plan whose MACs ratio is more than this much (relative) above the budget misses it.
BUDGET_TOLERANCE = 0.01
# A latency plan more than this much (relative) under its budget is pointed out: the trim's
# last step, a whole skipped block at batch 1, can overshoot by far.
UNDER_BUDGET = 0.05


class BudgetMissWarning(UserWarning):
    """A run exported a model whose MACs ratio is above its budget by more than
    `BUDGET_TOLERANCE` (relative): it is not compressed to the budget."""


def check_budget(ratio: float, budget: float, who: str, hint: str, unit: str = "MACs") -> dict:
    """Whether a model at ``ratio`` of the dense MACs (or, ``unit="latency"``, of the dense
    latency) meets ``budget`` (a fraction of the same) within `BUDGET_TOLERANCE`. On a miss the
    main process warns (`BudgetMissWarning`) and prints a line to stderr, both starting with
    ``who`` and ending with ``hint`` (what to change). Returns the summary fields
    ``budget_met``, ``plan_ratio`` and ``budget_ratio``."""
    met = ratio <= budget * (1 + BUDGET_TOLERANCE)
    if not met and is_main_process():
        message = (f"{who}: the exported model keeps {ratio:.2%} of the dense {unit}, above the budget {budget:.2%} "
                   f"by more than {BUDGET_TOLERANCE:.0%}: it is not compressed to the budget; {hint}")
        # The line too: warnings are shown once per place and can be filtered away.
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        warnings.warn(message, BudgetMissWarning, stacklevel=3)
    return {"budget_met": met, "plan_ratio": ratio, "budget_ratio": budget}


def note_under_budget(ratio: float, budget: float, who: str, hint: str, unit: str = "latency") -> bool:
    """Prints a NOTE to stderr (main process) when a model at ``ratio`` of the dense ``unit`` is
    more than `UNDER_BUDGET` (relative) under ``budget``: it gives away what the budget allowed,
    and is compared with models at the budget at a disadvantage. ``hint``: what takes finer
    steps. Returns whether the plan is that far under."""
    under = ratio < budget * (1 - UNDER_BUDGET)
    if under and is_main_process():
        print(f"NOTE: {who}: the exported model keeps {ratio:.2%} of the dense {unit}, {budget - ratio:.2%} of it "
              f"under the budget {budget:.2%}; {hint}", file=sys.stderr, flush=True)
    return under


def setup_distributed(device: str | None) -> tuple[torch.device, int, int]:
    """Initialises torch.distributed when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        # A peer that hangs (rather than dies, which the others see at once) ends the run after
        # UVC_DIST_TIMEOUT seconds instead of torch's default half hour.
        timeout = timedelta(seconds=float(os.environ.get("UVC_DIST_TIMEOUT", "600")))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return dev, rank, world


def load_model(source: str, checkpoint: str | None = None, **timm_kwargs) -> tuple[torch.nn.Module, dict]:
    """A model and its metadata from ``source``:

    - ``"demo"``: the small ViT trained on Fashion-MNIST that ships with uvc; ``"deep"``: its
      12-block sibling (a key of `SHIPPED`);
    - a folder written by `uvc.torch.save` (an exported, compressed model);
    - a timm model name, built with ``pretrained=False`` and ``timm_kwargs``, with weights
      from ``checkpoint`` (a safetensors file or a torch state dict, optionally under 'model').
      The class count, image size, input channels and patch size not given in ``timm_kwargs``
      are read from the checkpoint's tensors (a 2-class fine-tune of a 1000-class model loads
      as is); a checkpoint that still does not fit says which keys and shapes differ.
    """
    import timm
    if source in SHIPPED:
        stem = ASSETS / SHIPPED[source]
        if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".safetensors").is_file():
            raise FileNotFoundError(f"--model {source}: the shipped model {stem}.json / .safetensors is missing; "
                                    f"train it with `python scripts/train_dense.py --model {source}`")
        meta = json.loads(stem.with_suffix(".json").read_text())
        model = timm.create_model(meta["timm_model"], pretrained=False, **meta["kwargs"])
        _load_weights(model, _read_checkpoint(str(stem.with_suffix(".safetensors"))), f"the {source} weights")
        return model, _with_normalisation(meta)
    path = Path(source)
    if path.is_dir():
        model = load_slim(source)
        return model, dict(model.meta)
    if not timm.is_model(source):
        if path.suffix or "/" in source or path.exists():
            raise FileNotFoundError(f"--model {source}: no such folder (expected a folder written by uvc, 'demo' or a "
                                    "timm model name)")
        raise ValueError(f"--model {source!r}: not 'demo', an exported folder, or a timm model name")
    state = _read_checkpoint(checkpoint) if checkpoint is not None else None
    kwargs = dict(_shape_from_checkpoint(state), **timm_kwargs) if state is not None else dict(timm_kwargs)
    try:
        model = timm.create_model(source, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"--model {source!r} with {kwargs}: timm cannot build it ({e})") from None
    if state is not None:
        _load_weights(model, state, f"--checkpoint {checkpoint}")
    return model, _with_normalisation({"timm_model": source, "kwargs": kwargs})


def _with_normalisation(meta: dict) -> dict:
    meta.setdefault("mean", 0.2860)
    meta.setdefault("std", 0.3530)
    return meta


def _read_checkpoint(checkpoint: str) -> dict:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"--checkpoint {checkpoint}: expected a state dict (optionally under 'model'), "
                         f"got {type(state).__name__}")
    return state


def _shape_from_checkpoint(state: dict) -> dict:
    """timm keywords a ViT checkpoint implies: class count, image size, input channels, patch size."""
    out = {}
    head, proj, pos = state.get("head.weight"), state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if head is not None and head.dim() == 2:
        out["num_classes"] = int(head.shape[0])
    if proj is not None and proj.dim() == 4:
        out["in_chans"], out["patch_size"] = int(proj.shape[1]), int(proj.shape[2])
        if pos is not None and pos.dim() == 3:
            prefix = sum(int(state[k].shape[1]) for k in ("cls_token", "dist_token", "reg_token") if k in state)
            for patches in (pos.shape[1] - prefix, pos.shape[1]):  # pos_embed with or without the prefix tokens
                side = int(round(patches ** 0.5))
                if side * side == patches and patches > 0:
                    out["img_size"] = side * out["patch_size"]
                    break
    return out


def _load_weights(model: torch.nn.Module, state: dict, name: str) -> None:
    """Loads ``state`` strictly; a mismatch lists each key and shape that differs, one per line."""
    own = model.state_dict()
    lines = [f"  missing from the checkpoint: {k} {tuple(v.shape)}" for k, v in own.items() if k not in state]
    lines += [f"  not in the model: {k} {tuple(v.shape)}" for k, v in state.items() if k not in own]
    lines += [f"  shape of {k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if lines:
        raise ValueError(f"{name} does not fit the model ({len(lines)} differences; give the model's shape with "
                         "--num-classes, --img-size or --model-kwargs):\n" + "\n".join(lines[:20])
                         + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""))
    model.load_state_dict(state)


def timm_kwargs(settings: dict) -> dict:
    """``model_kwargs`` with ``num_classes`` / ``img_size`` given as their own settings."""
    kwargs = dict(settings["model_kwargs"])
    for key in ("num_classes", "img_size"):
        value = settings[key]
        if value is None:
            continue
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"--{key.replace('_', '-')} {value} and --model-kwargs {key}={kwargs[key]} "
                             "disagree; give one")
        kwargs[key] = value
    return kwargs


def _loaders(spec, settings: dict, rank: int, world: int):
    common = dict(seed=settings["seed"], image_size=spec.image_size, in_chans=spec.in_channels,
                  data_dir=settings["data_dir"])
    train = make_loader(settings["data"], "train", settings["train_batch_size"], subset=settings["subset"],
                        rank=rank, world_size=world, **common)
    test = make_loader(settings["data"], "test", settings["eval_batch_size"], subset=settings["eval_subset"],
                       rank=rank, world_size=world, **common)
    return train, test


def _schedule(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to 1 % of the base rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _criterion(teacher, settings):
    return DistillationLoss(teacher, settings["distillation_type"], settings["distillation_alpha"],
                            settings["distillation_tau"])


# Settings passed through to `uvc.Solver` (all its hyper-parameters).
SOLVER_KEYS = ("convention", "budget_macs", *SOLVER_DEFAULTS)

# What a checkpoint must share with the run that resumes it (the model and the budget).
RESUME_KEYS = {"compress": ("model", "model_kwargs", "num_classes", "img_size", "budget", "budget_macs", "convention",
                            "budget_latency", "latency_table"),
               "finetune": ("model", "teacher", "model_kwargs", "num_classes", "img_size")}


def _latency_table(settings: dict):
    """The latency table of a latency budget (None for a MACs budget), checked before training."""
    from ..latency import LatencyTable
    if settings["budget_latency"] is None:
        if settings["latency_table"] is not None:
            raise ValueError("--latency-table is given without --budget-latency: say which fraction of the dense "
                             "latency to keep")
        return None
    if settings["latency_table"] is None:
        raise ValueError("--budget-latency needs --latency-table (make one with `uvc profile MODEL --out latency.json` "
                         "on the device and at the batch size you deploy)")
    if not 0 < settings["budget_latency"] <= 1:
        raise ValueError(f"--budget-latency must lie in (0, 1] (a fraction of the dense latency), got "
                         f"{settings['budget_latency']}")
    if settings["budget_macs"] is not None:
        raise ValueError("--budget-latency and --budget-macs exclude each other")
    return LatencyTable.load(settings["latency_table"])


def compress(**settings) -> dict:
    """Stage 1. Writes to ``output_dir``: ``stage1/`` (checkpoint, log.jsonl), ``plan.json``,
    ``stage1_model/`` (the exported model before fine-tuning) and ``summary_stage1.json``. The
    summary says whether the plan meets the budget (``budget_met``, ``plan_ratio`` and
    ``budget_ratio`` as fractions of the dense MACs in the budget's convention); a miss also
    warns (`BudgetMissWarning`). ``settings``: those of `uvc.settings.COMPRESS` (the rest keep
    their defaults); the resolved ones are written to ``output_dir``/settings.json."""
    settings = COMPRESS.resolve(settings, source="compress")
    if not settings["enable_pruning"]:
        settings.update(prune_heads=False, prune_dims=False, prune_neurons=False)
    latency = _latency_table(settings)
    device, rank, world = setup_distributed(settings["device"])
    torch.manual_seed(settings["seed"])
    model, meta = load_model(settings["model"], settings["checkpoint"], **timm_kwargs(settings))
    model.to(device)
    teacher = copy.deepcopy(model).eval()
    spec = spec_from_model(model)
    if latency is not None:
        latency.check(spec)
    train, test = _loaders(spec, settings, rank, world)
    epochs = settings["num_epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    scheduler = _schedule(optimizer, epochs * len(train), 0)
    solver_kwargs = {k: settings[k] for k in SOLVER_KEYS if settings[k] is not None}
    budget = settings["budget"] if latency is None else settings["budget_latency"]
    comp = Compressor(model, budget, steps_per_epoch=len(train), optimizer=optimizer, seed=settings["seed"],
                      importance=settings["importance"], latency=latency, **solver_kwargs)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out = Path(settings["output_dir"])
    fit(net, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler, criterion=_criterion(teacher, settings),
        out_dir=out / "stage1", compressor=comp, eval_loader=test, resume=settings["resume"],
        checkpoint_every=settings["checkpoint_every"], stop_after=settings["stop_after"],
        desc="stage 1", config=_jsonable(settings), match=RESUME_KEYS["compress"], progress=settings["progress"],
        on_start=lambda: COMPRESS.save(settings, out))
    if settings["stop_after"] is not None and comp.step_count < epochs * len(train):
        return {"stopped_at_step": comp.step_count}
    model.eval()
    # The search changed `model` in place; `teacher`, the copy taken before it, is the dense model.
    slim = comp.export(fit=settings["fit_budget"], weights=teacher if settings["rewind"] else None).to(device)
    if settings["reconstruct"]:
        from .oneshot import _batches, reconstruct
        reconstruct(slim, teacher, _batches(train.batches(0), settings["calibration"], device),
                    progress=settings["progress"])
    x, _ = next(test.batches(0))
    with torch.no_grad():
        masked, exported = model(x.to(device)), slim(x.to(device))
    plan = slim.plan  # what export extracted (and fitted): extracting it again would repeat the fit
    # After a rewind, a reconstruction or a fit the exported model differs from the masked one on purpose.
    summary = {
        "stage": 1, "budget": settings["budget"],
        "masked_acc": evaluate(model, test, device), "exported_acc": evaluate(slim, test, device),
        "max_abs_logit_diff": (masked - exported).abs().max().item(),
        "macs": cost.count(spec, plan).macs, "dense_macs": cost.count(spec).macs,
        "fvcore_macs": cost.count(spec, plan, "fvcore").macs,
    }
    summary["ratio"] = summary["macs"] / summary["dense_macs"]
    conv = comp.solver.convention
    if latency is None:
        summary.update(check_budget(cost.count(spec, plan, conv).macs / comp.solver.dense_macs,
                                    comp.solver.hyper["budget"], "uvc compress",
                                    "train longer (more --num_epochs) or allow more MACs (--budget)"))
    else:
        predicted = latency.predict(plan)
        summary.update(predicted_ms=predicted, dense_predicted_ms=latency.dense_ms, latency_table=latency.source,
                       **check_budget(predicted / latency.dense_ms, comp.solver.hyper["budget"], "uvc compress",
                                      "train longer (more --num_epochs) or allow more latency (--budget-latency)",
                                      unit="latency"))
        coarse = comp.solver.hyper["skip_blocks"] and comp.solver.hyper["gate_granularity"] == "block"
        note_under_budget(summary["plan_ratio"], summary["budget_ratio"], "uvc compress",
                          "one skip gate per block skips a whole block at a time; --gate-granularity part takes "
                          "finer steps" if coarse else "the trim's last step overshot it (the fill never un-skips "
                          "a part)")
    if is_main_process():
        plan.save(out / "plan.json")
        save_slim(slim, out / "stage1_model", meta=meta)
        (out / "summary_stage1.json").write_text(json.dumps(summary, indent=1))
    return summary


def finetune(**settings) -> dict:
    """Stage 2: fine-tune the exported model in ``model`` (a folder) with distillation from
    the dense ``teacher``. Writes ``stage2/``, the final ``model/`` and settings.json to
    ``output_dir``. ``settings``: those of `uvc.settings.FINETUNE`."""
    settings = FINETUNE.resolve(settings, source="finetune")
    device, rank, world = setup_distributed(settings["device"])
    torch.manual_seed(settings["seed"])
    model, meta = load_model(settings["model"])
    if not isinstance(model, SlimViT):
        raise ValueError(f"--model {settings['model']!r}: uvc finetune takes a folder written by uvc compress")
    teacher = None
    if settings["distillation_type"] != "none":
        teacher, _ = load_model(settings["teacher"], settings["teacher_checkpoint"], **timm_kwargs(settings))
        teacher.to(device).eval()
    model.to(device)
    spec = model.spec
    train, test = _loaders(spec, settings, rank, world)
    epochs = settings["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    scheduler = _schedule(optimizer, epochs * len(train), len(train) // 4)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out = Path(settings["output_dir"])
    records = fit(net, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
                  criterion=_criterion(teacher, settings), out_dir=out / "stage2", eval_loader=test,
                  resume=settings["resume"], checkpoint_every=settings["checkpoint_every"],
                  stop_after=settings["stop_after"], desc="stage 2", config=_jsonable(settings),
                  match=RESUME_KEYS["finetune"], progress=settings["progress"],
                  on_start=lambda: FINETUNE.save(settings, out))
    summary = {"stage": 2, "acc": evaluate(model, test, device), "epochs": epochs, "records": records}
    if is_main_process():
        save_slim(unwrap(model).eval(), out / "model", meta=meta)
        (out / "summary_stage2.json").write_text(json.dumps(summary, indent=1))
    return summary


def prune(**settings) -> dict:
    """One-shot compression (`uvc.torch.prune.prune`): no training. Scores and refits on the
    first ``calibration`` images of the training split, evaluates the dense and the pruned
    model on the test split, and writes ``model/`` (the `SlimViT`), ``plan.json``,
    ``summary_prune.json`` and settings.json to ``output_dir``. ``settings``: those of
    `uvc.settings.PRUNE`."""
    from .oneshot import prune as prune_model
    settings = PRUNE.resolve(settings, source="prune")
    device, _, world = setup_distributed(settings["device"])
    if world > 1:
        raise ValueError("uvc prune runs in one process; launch it without torchrun")
    torch.manual_seed(settings["seed"])
    model, meta = load_model(settings["model"], settings["checkpoint"], **timm_kwargs(settings))
    model.to(device).eval()
    spec = spec_from_model(model)
    common = dict(seed=settings["seed"], image_size=spec.image_size, in_chans=spec.in_channels,
                  data_dir=settings["data_dir"])
    calibration = make_loader(settings["data"], "train", min(settings["batch_size"], settings["calibration"]),
                              subset=settings["calibration"], **common)
    out = Path(settings["output_dir"])
    PRUNE.save(settings, out)
    slim = prune_model(model, settings["budget"], calibration.batches(0), criterion=settings["criterion"],
                       images=settings["calibration"], reconstruct_weights=settings["reconstruct"],
                       ridge=settings["ridge"], convention=settings["convention"], progress=settings["progress"])
    report = slim.prune_report
    summary = {"stage": "prune", **{k: report[k] for k in ("criterion", "budget", "ratio", "images", "seconds")},
               "macs": cost.count(spec, slim.plan).macs, "dense_macs": cost.count(spec).macs}
    if settings["evaluate"]:
        test = make_loader(settings["data"], "test", settings["eval_batch_size"], subset=settings["eval_subset"],
                           **common)
        summary.update(dense_acc=evaluate(model, test, device), acc=evaluate(slim, test, device))
    summary.update(check_budget(report["ratio"], settings["budget"], "uvc prune", "allow more MACs (--budget)"))
    slim.plan.save(out / "plan.json")
    save_slim(slim, out / "model", meta=meta)
    (out / "summary_prune.json").write_text(json.dumps({**summary, "layers": report["layers"]}, indent=1))
    return summary


def describe(model: torch.nn.Module) -> dict:
    """MACs (uvc and fvcore conventions), parameters and the plan of a timm or slim model."""
    from ..plan import ArchPlan
    if isinstance(model, SlimViT):
        spec, plan = model.spec, model.plan
    else:
        spec = spec_from_model(model)
        plan = ArchPlan.dense(spec)
    return {"macs": cost.count(spec, plan).macs, "fvcore_macs": cost.count(spec, plan, "fvcore").macs,
            "params": sum(p.numel() for p in model.parameters()), "plan": plan}


def _jsonable(settings: dict) -> dict:
    """The settings JSON can hold (what a checkpoint records of its run)."""
    out = {}
    for k, v in settings.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out

"""At the same MACs and the same training, which model is more accurate: uvc's, Torch-Pruning's
or a uniform one? Every row starts from a shipped dense Fashion-MNIST ViT and trains the same
total number of epochs on the same data (a seeded subset of the training images), with the
same loop (`uvc.torch.train.fit`), AdamW, cosine schedule and soft distillation from the dense
model; all fine-tuning is `uvc.torch.pipeline.finetune` (uvc's stage 2, the same code and the
stage-2 defaults of `uvc.settings.FINETUNE` for every row).

Rows (per model × budget × seed):
  uvc          the UVC search (`pipeline.compress`, budget counted in the fvcore convention, the
               recipe of `uvc demo`'s stage 1) for round(search fraction × epochs) epochs, the plan
               fitted to the budget at export (unless --no-fit-budget; on the dense model's weights
               with --rewind; refit by least squares with --reconstruct), every head keeping
               --qk-keep of its query/key dims (by budget: 0.5 at 0.3, all at other budgets; 1 keeps
               all, as UVC), then fine-tuning for the rest; --search-set changes more settings of
               the search;
  uvc_prune    `uvc prune` without training (first-order Taylor scores on --calibration training
               images, the budget spent across layers by the cost model, kept proj / fc2 columns
               refit by least squares), then fine-tuning for all the epochs;
  tp_l2        Torch-Pruning global L2 magnitude on heads and MLP neurons, the ratio bisected to
               the largest model at or below the budget, then fine-tuning for all the epochs;
  tp_taylor    the same with global Taylor importance (on --calibration training images);
  uniform      every layer keeps the same fraction ρ of its heads (rounded, at least one) and MLP
               neurons, by the squared norm of their attn.proj / mlp.fc2 input columns, ρ
               bisected to the budget, then fine-tuning for all the epochs;
  uvc_scratch  the architecture the uvc row found, re-initialised at random (timm-style) and
               trained for all the epochs: does the search find more than a shape?

Every row reports top-1 on the test images (all 10 000 unless --eval-subset), the MACs ratio by
one counter on the final model (`uvc.torch.count_macs` over the dense model's), parameters,
top-1 before any training (after pruning / after the search), training seconds (the epochs'
own time, evaluation aside) and CPU latency at batch 1 and 64, measured interleaved in one run
over all finished rows of the table (`uvc.torch.latency.compare_latency`). Torch-Pruning's pruned
timm model is converted to a `uvc.torch.SlimViT` of the same weights (checked: the same outputs),
so every row is saved, fine-tuned, counted and timed as the same kind of module.

    python benchmarks/bench_quality.py [--models demo deep] [--budgets 0.5 0.3] [--seeds 0 1]
        [--rows ...] [--epochs 8] [--subset 20000] [--search-fraction 0.125] [--importance taylor] [--no-fit-budget]
        [--rewind] [--reconstruct] [--qk-keep [BUDGET=]FRACTION ...] [--search-set KEY=VALUE ...]
    python benchmarks/bench_quality.py --smoke    # demo model, budget 0.5, seed 0, a few steps per row, 1 + 1 epochs for uvc (CI)

Prints a table (per model and budget, mean ± half the range over the seeds, with uvc's lead over
the best other row and its distance to the dense model) and writes
benchmarks/results/quality.json (quality_smoke.json with --smoke). Each finished row is cached
in benchmarks/results/quality/<key>/ (the JSON's name without .json), keyed by every setting
it depends on, with its final model (a `uvc.torch.save` folder): a run resumes where it
stopped and can be split with --models / --budgets / --seeds / --rows. Latency is measured
over the rows of the run's own table: run the whole table once more (all cached) to time
every row side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from statistics import fmean
from pathlib import Path

import torch

from common import calibration_batches, require_torch_pruning, tp_at_budget

ROWS = ("uvc", "uvc_prune", "tp_l2", "tp_taylor", "uniform", "uvc_scratch")
LABELS = {"uvc": "uvc search + fine-tune", "uvc_prune": "uvc prune (Taylor + least squares) + fine-tune",
          "tp_l2": "Torch-Pruning global L2 + fine-tune",
          "tp_taylor": "Torch-Pruning global Taylor + fine-tune", "uniform": "uniform heads + MLP + fine-tune",
          "uvc_scratch": "uvc's architecture from scratch"}
MODELS = ("demo", "deep")  # the keys of uvc.torch.pipeline.SHIPPED
BATCH_SIZES = (1, 64)  # of the latency measurement
# The search recipe of `uvc demo` (stage 1); z's learning rate also grows after every search epoch.
SEARCH = dict(learning_rate=5e-4, warmup_epochs=0.25)
# The uvc row's query/key keep (`uvc compress --qk-keep`) by budget, the same for every model: at
# 0.3 half of each head's q/k dims (+0.42 / +0.51 points on demo / deep, two seeds), elsewhere all
# (at 0.5, half cost 0.38 points on the demo, seed 0). None: the other budgets.
QK_KEEP = {0.3: 0.5, None: 1.0}
# --smoke only: a search of a few dozen steps reaches the budget with faster-moving counts.
SMOKE_SOLVER = dict(warmup_epochs=0.0, lr_counts=(0.2, 0.2, 0.2), hysteresis=0.0, z_init=20.0, budget_damping=50.0)
# --smoke: 32 steps of 8 images per epoch; one thread, which a busy 2-core machine runs best.
SMOKE = dict(models=["demo"], budgets=[0.5], seeds=[0], epochs=2, subset=256, eval_subset=200, calibration=64,
             batch_size=8, threads=1, solver=SMOKE_SOLVER, search_fraction=0.5)


def parse(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    from uvc.settings import COMPRESS, FINETUNE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3], help="fractions of the dense MACs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of every row (search included)")
    parser.add_argument("--subset", type=int, default=20000, help="training images per epoch (a seeded subset)")
    parser.add_argument("--search-fraction", type=float, default=0.125, help="uvc: the share of the epochs searching")
    parser.add_argument("--importance", choices=COMPRESS["importance"].choices,
                        default=COMPRESS.defaults()["importance"],
                        help="uvc: what the search scores value dims and neurons by (default: uvc compress's)")
    parser.add_argument("--fit-budget", action=argparse.BooleanOptionalAction,
                        default=COMPRESS.defaults()["fit_budget"],
                        help="uvc: fit the searched plan to the budget at export (default: uvc compress's)")
    parser.add_argument("--rewind", action=argparse.BooleanOptionalAction, default=COMPRESS.defaults()["rewind"],
                        help="uvc: fine-tune the searched plan from the dense model's weights, not the search's own "
                        "(default: uvc compress's)")
    parser.add_argument("--reconstruct", action=argparse.BooleanOptionalAction,
                        default=COMPRESS.defaults()["reconstruct"],
                        help="uvc: refit the exported model by least squares on --calibration images before "
                        "fine-tuning (default: uvc compress's)")
    parser.add_argument("--qk-keep", nargs="+", default=None, metavar="[BUDGET=]FRACTION",
                        help="uvc: the fraction of each head's query/key dims the search keeps (`uvc compress "
                        "--qk-keep`; 1 keeps all, as UVC), for every budget or, as BUDGET=FRACTION, for one "
                        "(default: 0.3=0.5, all dims at other budgets)")
    parser.add_argument("--search-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="uvc: more `uvc compress` settings for the search, VALUE in JSON "
                        "(prune_dims=false, distillation_alpha=0.5, lr_counts=[0.05,0.05,0.05]); named in the "
                        "cache key. Not the settings every row shares (data, epochs, seed) or that have a flag here")
    parser.add_argument("--eval-subset", type=int, help="test images (default all 10 000)")
    parser.add_argument("--calibration", type=int, default=1024,
                        help="tp_taylor, uvc_prune: training images to score on (and uvc --reconstruct's to refit on)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", help="where to train (default: cuda if available); latency is on the CPU")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="demo model, budget 0.5, seed 0, 2 epochs of 256 images at batch 8, 200 test images, "
                        "1 thread")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality.json"))
    args = parser.parse_args(argv)
    # Each once; rows in ROWS' order, so that a uvc row trains before the scratch row that needs it.
    args.models, args.budgets, args.seeds = (list(dict.fromkeys(v)) for v in (args.models, args.budgets, args.seeds))
    args.rows = [r for r in ROWS if r in args.rows]
    args.batch_size = FINETUNE.defaults()["train_batch_size"]
    args.solver = {}
    args.search_set = search_settings(parser, args.search_set)
    args.qk_keep = qk_keep_settings(parser, args.qk_keep)
    if args.smoke:
        vars(args).update(SMOKE)
        args.out = str(Path(args.out).with_name("quality_smoke.json"))
    return parser, args


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Settings that cannot run stop here, before anything loads or trains."""
    for b in args.budgets:
        if not (0 < b <= 1) or math.isnan(b):
            parser.error(f"--budgets {b}: every budget must lie in (0, 1] (a fraction of the dense MACs)")
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: must be at least 1")
    if {"uvc", "uvc_scratch"} & set(args.rows):
        if not 0 < args.search_fraction < 1:
            parser.error(f"--search-fraction {args.search_fraction}: must lie in (0, 1)")
        search = round(args.search_fraction * args.epochs)
        if not 1 <= search < args.epochs:
            parser.error(f"--search-fraction {args.search_fraction} of --epochs {args.epochs} leaves {search} search "
                         f"and {args.epochs - search} fine-tuning epochs; the uvc row needs at least one of each")
    if args.subset < args.batch_size:
        parser.error(f"--subset {args.subset}: fewer than one batch of {args.batch_size} images")
    for name in ("eval_subset", "calibration", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be at least 1")
    require_torch_pruning(parser, args.rows)


# What the benchmark fixes for every uvc search (the same for all rows, or a flag of its own).
OWNED = {"model", "checkpoint", "model_kwargs", "num_classes", "img_size", "budget", "budget_macs", "budget_latency",
         "latency_table", "num_epochs", "convention", "output_dir", "resume", "stop_after", "zlr_schedule",
         "importance", "fit_budget", "rewind", "reconstruct", "calibration", "qk_keep", "data", "data_dir", "subset",
         "eval_subset", "seed", "train_batch_size", "eval_batch_size", "device", "progress", "checkpoint_every"}


def search_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--search-set`` KEY=VALUE items as checked `uvc compress` settings (VALUE parsed as JSON,
    else taken as a string)."""
    from uvc.settings import COMPRESS
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--search-set {item!r}: expected KEY=VALUE")
        if key in out:
            parser.error(f"--search-set {key}: given twice")
        if key in OWNED or key not in COMPRESS.names:
            parser.error(f"--search-set {key}: not a setting of the search the benchmark leaves open; "
                         f"open: {', '.join(n for n in COMPRESS.names if n not in OWNED)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        try:
            out[key] = COMPRESS[key].check(value, f"--search-set {key}")
        except (TypeError, ValueError) as e:
            parser.error(str(e))
    return dict(sorted(out.items()))


def qk_keep_settings(parser: argparse.ArgumentParser, items: list[str] | None) -> dict:
    """``--qk-keep`` items as {budget: fraction}, the key None for every budget not named
    (`QK_KEEP` when not given)."""
    if items is None:
        return dict(QK_KEEP)
    out = {None: 1.0}
    for item in items:
        budget, sep, text = item.rpartition("=")
        try:
            value, where = float(text), float(budget) if sep else None
        except ValueError:
            parser.error(f"--qk-keep {item!r}: expected FRACTION or BUDGET=FRACTION (numbers)")
        if not 0 < value <= 1:
            parser.error(f"--qk-keep {item!r}: the fraction must lie in (0, 1] (of each head's query/key dims)")
        out[where] = value
    return out


def qk_keep_of(args, budget: float) -> float:
    return args.qk_keep.get(budget, args.qk_keep[None])


def key_of(args, model: str, budget: float, seed: int, row: str) -> str:
    """The cache key of one row: every setting its result depends on."""
    key = (f"{model}_b{budget:g}_s{seed}_{row}_e{args.epochs}_n{args.subset}_bs{args.batch_size}"
           f"_v{args.eval_subset or 'all'}")
    if row in ("uvc", "uvc_scratch"):
        key += (f"_f{args.search_fraction:g}_i{args.importance}" + ("_fit" if args.fit_budget else "")
                + ("_rewind" if args.rewind else "") + (f"_rec{args.calibration}" if args.reconstruct else "")
                + ("_smoke" if args.solver else "")
                # UVC's all-dims search keeps the key it had before --qk-keep existed.
                + (f"_qk_keep={qk_keep_of(args, budget):g}" if qk_keep_of(args, budget) != 1 else "")
                + "".join(f"_{k}={json.dumps(v, separators=(',', ':'))}" for k, v in args.search_set.items()))
    if row in ("tp_taylor", "uvc_prune"):
        key += f"_c{args.calibration}"
    return key


def dense_key(args, model: str, seed: int) -> str:
    """The JSON key of a dense model's entry (its test images depend on the seed under --eval-subset)."""
    return f"{model}_s{seed}_v{args.eval_subset or 'all'}"


# ---- The starting points -------------------------------------------------------------------

def uniform_plan(model, rho: float):
    """Every layer keeps round(ρ·heads) heads (at least one, full value width) and round(ρ·MLP)
    neurons (at least one): those with the largest squared norm of their attn.proj / mlp.fc2
    input columns."""
    from uvc.plan import ArchPlan, LayerPlan
    from uvc.torch.introspect import spec_from_model
    spec = spec_from_model(model)
    hd = spec.v_head_dim
    heads = max(1, math.floor(rho * spec.num_heads + 0.5))
    neurons = max(1, math.floor(rho * spec.mlp_hidden + 0.5))
    layers = []
    for block in model.blocks:
        head_norm = block.attn.proj.weight.detach().pow(2).sum(0).view(spec.num_heads, hd).sum(1)
        neuron_norm = block.mlp.fc2.weight.detach().pow(2).sum(0)
        layers.append(LayerPlan(heads=tuple(sorted(head_norm.topk(heads).indices.tolist())),
                                v_index=(tuple(range(hd)),) * heads,
                                neurons=tuple(sorted(neuron_norm.topk(neurons).indices.tolist())),
                                tokens=spec.num_tokens))
    return ArchPlan(spec, tuple(layers))


def uniform_at_budget(model, budget: float):
    """The uniform `SlimViT` with the largest ρ at or below ``budget`` of the dense MACs (fvcore
    convention, what `count_macs` counts); ValueError when even one head and one neuron per
    layer is above it."""
    from uvc import cost
    from uvc.torch import SlimViT
    from uvc.torch.introspect import spec_from_model
    spec = spec_from_model(model)
    dense = cost.count(spec, None, "fvcore").macs
    fits = lambda rho: cost.count(spec, uniform_plan(model, rho), "fvcore").macs <= budget * dense  # noqa: E731
    if not fits(0.0):
        raise ValueError(f"even one head and one MLP neuron per layer is above {budget} of the MACs")
    lo, hi = 0.0, 1.0
    if fits(1.0):
        lo = 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    slim = SlimViT.from_timm(model, uniform_plan(model, lo)).eval()
    slim.uniform_rho = lo
    return slim


def slim_from_pruned(pruned, dense):
    """Torch-Pruning's pruned timm model as a `SlimViT` (same weights, same outputs): a plan with
    each layer's surviving heads and neurons, numbered afresh (Torch-Pruning does not say which
    indices it kept; the plan's counts are what matter)."""
    from uvc.plan import ArchPlan, LayerPlan
    from uvc.torch import SlimViT
    from uvc.torch.introspect import model_config, spec_from_model
    spec = spec_from_model(dense)
    layers = tuple(LayerPlan(heads=tuple(range(b.attn.num_heads)),
                             v_index=(tuple(range(spec.v_head_dim)),) * b.attn.num_heads,
                             neurons=tuple(range(b.mlp.fc1.out_features)), tokens=spec.num_tokens)
                   for b in pruned.blocks)
    slim = SlimViT(spec, ArchPlan(spec, layers), **model_config(dense)).eval()
    slim.load_state_dict(pruned.state_dict())  # timm's names, qkv laid out [q heads | k heads | v heads] in both
    x = torch.randn(4, spec.in_channels, *spec.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (slim(x) - pruned(x)).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the SlimViT of the Torch-Pruning model differs from it by {diff:.2e}")
    return slim


def scratch_model(uvc_model, seed: int):
    """``uvc_model``'s architecture with fresh weights: timm's init (truncated normal, std 0.02,
    on every Linear, zero biases, LayerNorms at one; tokens and position embedding as
    `SlimViT` draws them, the patch convolution torch's default)."""
    from uvc.torch import SlimViT
    torch.manual_seed(seed)
    model = SlimViT(uvc_model.spec, uvc_model.plan, **uvc_model.config)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model.eval()


def start_model(row: str, dense, budget: float, calibration) -> torch.nn.Module:
    """The pruned model uvc_prune / tp_l2 / tp_taylor / uniform starts fine-tuning from (a `SlimViT`)."""
    from uvc.torch import count_macs, prune
    if row == "uniform":
        return uniform_at_budget(dense, budget)
    if row == "uvc_prune":  # the budget in what count_macs counts, as every row's
        return prune(dense, budget, calibration, criterion="taylor", images=None, convention="fvcore", progress=False)
    x = calibration[0][0][:1]
    pruned = tp_at_budget(dense, budget, row[3:], calibration, count_macs(dense, x)["macs"])
    return slim_from_pruned(pruned, dense)


# ---- Training ------------------------------------------------------------------------------

def data_settings(args, seed: int) -> dict:
    return dict(data="fashion-mnist", subset=args.subset, eval_subset=args.eval_subset, seed=seed,
                train_batch_size=args.batch_size, device=args.device, progress=False, checkpoint_every=1000)


def epoch_seconds(log: Path) -> float:
    """The training time of a stage: its epochs' own seconds (evaluation aside) from log.jsonl."""
    return sum(json.loads(line)["seconds"] for line in log.read_text().splitlines() if line.strip())


def finetune_row(start: Path, model_name: str, epochs: int, out: Path, args, seed: int) -> dict:
    """Fine-tuning, one code path for every row: uvc's stage 2 on the `SlimViT` folder ``start``
    with distillation from the dense model, every hyper-parameter at `uvc.settings.FINETUNE`'s
    defaults. The final model lands in ``out``/model."""
    from uvc.torch.pipeline import finetune
    resume = (out / "stage2" / "checkpoint.pt").is_file()
    summary = finetune(model=str(start), teacher=model_name, epochs=epochs, output_dir=str(out), resume=resume,
                       **data_settings(args, seed))
    return {"acc": summary["acc"], "train_seconds": epoch_seconds(out / "stage2" / "log.jsonl")}


def run_row(args, model_name: str, meta: dict, budget: float, seed: int, row: str, folder: Path,
            start: torch.nn.Module | None, uvc_folder: Path | None) -> dict:
    """Trains one row into ``folder``; returns its entry (the final model in ``folder``/finetune/model)."""
    from uvc.settings import FINETUNE
    from uvc.torch import load as load_slim, save as save_slim
    from uvc.torch.data import make_loader
    from uvc.torch.pipeline import compress
    from uvc.torch.train import evaluate
    t0 = time.perf_counter()
    entry = {"model": model_name, "budget": budget, "seed": seed, "row": row, "epochs": args.epochs}
    if row == "uvc":
        search = round(args.search_fraction * args.epochs)
        distill = {k: v for k, v in FINETUNE.defaults().items() if k.startswith("distillation_")}
        # --search-set last: it may override the search recipe and its distillation.
        recipe = {**SEARCH, **distill, **args.solver, "qk_keep": qk_keep_of(args, budget), **args.search_set}
        out = folder / "search"
        s1 = compress(model=model_name, budget=budget, num_epochs=search, convention="fvcore", output_dir=str(out),
                      zlr_schedule=tuple(float(e) for e in range(1, search)),
                      resume=(out / "stage1" / "checkpoint.pt").is_file(),
                      importance=args.importance, fit_budget=args.fit_budget, rewind=args.rewind,
                      reconstruct=args.reconstruct,
                      calibration=args.calibration, **recipe, **data_settings(args, seed))
        start_dir, train_seconds = out / "stage1_model", epoch_seconds(out / "stage1" / "log.jsonl")
        entry.update(acc_before=s1["exported_acc"], search_epochs=search, importance=args.importance,
                     fit_budget=args.fit_budget, rewind=args.rewind, reconstruct=args.reconstruct,
                     qk_keep=qk_keep_of(args, budget),
                     budget_met=s1["budget_met"], **({"search_set": args.search_set} if args.search_set else {}))
    else:
        if row == "uvc_scratch":
            start = scratch_model(load_slim(uvc_folder / "search" / "stage1_model"), seed)
        start_dir, train_seconds, search = folder / "start", 0.0, 0
        save_slim(start, start_dir, meta=meta)
        spec = start.spec
        test = make_loader("fashion-mnist", "test", 500, subset=args.eval_subset, seed=seed,
                           image_size=spec.image_size, in_chans=spec.in_channels)
        entry["acc_before"] = evaluate(start, test, torch.device("cpu"))
        if row == "uniform":
            entry["rho"] = start.uniform_rho
    tuned = finetune_row(start_dir, model_name, args.epochs - search, folder / "finetune", args, seed)
    final = load_slim(folder / "finetune" / "model")
    x = torch.zeros(1, final.spec.in_channels, *final.spec.image_size)
    from uvc.torch import count_macs
    entry.update(acc=tuned["acc"], macs=count_macs(final, x)["macs"],
                 params=sum(p.numel() for p in final.parameters()),
                 train_seconds=train_seconds + tuned["train_seconds"], seconds=time.perf_counter() - t0,
                 plan=[[len(l.heads), l.v_dim, len(l.neurons), int(l.attn), int(l.mlp), l.qk_dim] for l in final.plan.layers])
    for ckpt in folder.glob("*/stage*/checkpoint.pt"):  # the row is done: no resume needed, save the space
        ckpt.unlink()
    return entry


# ---- Reporting -----------------------------------------------------------------------------

def mean_spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean, spread = sum(values) / len(values), (max(values) - min(values)) / 2
    return f"{mean:{fmt}} ± {spread:{fmt}}" if len(values) > 1 else f"{mean:{fmt}}"


def margins(args, data: dict, keys: dict) -> dict:
    """Per model and budget, where the table's uvc row stands (means over the seeds, top-1 points):
    ``lead``, uvc minus the best other row (named in ``runner_up``), and ``to_dense``, uvc minus
    the dense model. Empty without a uvc row and at least one other."""
    others = [r for r in args.rows if r != "uvc"]
    if "uvc" not in args.rows or not others:
        return {}
    out = {}
    for model in args.models:
        dense = fmean([data["dense"][dense_key(args, model, s)]["acc"] for s in args.seeds])
        for budget in args.budgets:
            acc = {r: fmean([data["rows"][keys[model, budget, s, r]]["acc"] for s in args.seeds]) for r in args.rows}
            runner_up = max(others, key=acc.get)
            out[f"{model}_b{budget:g}"] = {"uvc": acc["uvc"], "runner_up": runner_up,
                                           "lead": acc["uvc"] - acc[runner_up], "to_dense": acc["uvc"] - dense}
    return out


def print_table(args, data: dict, keys: dict) -> None:
    from uvc.torch.pipeline import BUDGET_TOLERANCE
    lat = data.get("latency", {}).get("ms", {})
    header = (f"{'method':<42} {'top-1 %':>14} {'before %':>14} {'MACs ratio':>14} {'params':>8} {'train s':>12} "
              + " ".join(f"{f'ms @ {b}':>12}" for b in BATCH_SIZES))
    print(f"seeds {args.seeds}: mean ± half the range; {args.epochs} epochs of {args.subset} images; test images: "
          f"{args.eval_subset or 10000}; MACs by uvc.torch.count_macs; latency: CPU, {args.threads} threads")
    for model in args.models:
        dense = [data["dense"][dense_key(args, model, s)] for s in args.seeds]
        print(f"\n{model}: dense {mean_spread([d['acc'] for d in dense], '.2f')} %, "
              f"{dense[0]['macs'] / 1e6:.2f} M MACs, {dense[0]['params']} params"
              + "".join(f", {lat[f'dense_{model}'][str(b)]:.2f} ms @ {b}" for b in BATCH_SIZES
                        if f"dense_{model}" in lat))
        for budget in args.budgets:
            print(f"budget {budget}\n{header}")
            for row in args.rows:
                entries = [data["rows"][keys[model, budget, s, row]] for s in args.seeds]
                ms = {b: [lat[keys[model, budget, s, row]][str(b)] for s in args.seeds
                          if keys[model, budget, s, row] in lat] for b in BATCH_SIZES}
                over = any(e["ratio"] > budget * (1 + BUDGET_TOLERANCE) for e in entries)
                # A baseline whose steps are coarse (3 heads, rounded) may stop well below the budget.
                under = any(e["ratio"] < budget * (1 - BUDGET_TOLERANCE) for e in entries)
                label = LABELS[row] + (" (over budget)" if over else " (under budget)" if under else "")
                print(f"{label:<42} {mean_spread([e['acc'] for e in entries], '.2f'):>14} "
                      f"{mean_spread([e['acc_before'] for e in entries], '.2f'):>14} "
                      f"{mean_spread([e['ratio'] for e in entries], '.3f'):>14} "
                      f"{round(sum(e['params'] for e in entries) / len(entries)):>8} "
                      f"{mean_spread([e['train_seconds'] for e in entries], '.0f'):>12} "
                      + " ".join(f"{mean_spread(ms[b], '.2f'):>12}" for b in BATCH_SIZES))
            m = data.get("margins", {}).get(f"{model}_b{budget:g}")
            if m:
                print(f"uvc {m['lead']:+.2f} points against the best other row ({LABELS[m['runner_up']]}), "
                      f"{m['to_dense']:+.2f} against the dense model")


def measure_latency(args, data: dict, keys: dict, cache: Path, dense: dict, shape: tuple) -> None:
    """CPU latency of the ``dense`` models and every finished row of the table, interleaved in one
    run (on random inputs of ``shape``, the shipped models' (C, H, W))."""
    from uvc.torch import load as load_slim
    from uvc.torch.latency import compare_latency
    models = {f"dense_{m}": model for m, model in dense.items()}
    for key in keys.values():
        if (cache / key / "result.json").is_file():
            models[key] = load_slim(cache / key / "finetune" / "model", device="cpu")
    repeats, warmup = (3, 1) if args.smoke else (30, 3)
    result = compare_latency(models, shape, BATCH_SIZES, warmup=warmup, repeats=repeats, threads=args.threads,
                             device="cpu")
    data["latency"] = {"batch_sizes": list(BATCH_SIZES), "threads": args.threads, "repeats": repeats,
                       "ms": {name: {str(b): r[b]["median_ms"] for b in BATCH_SIZES} for name, r in result.items()}}


def main(argv=None) -> dict:
    parser, args = parse(argv)
    check(parser, args)
    torch.set_num_threads(args.threads)
    from uvc.torch import count_macs
    from uvc.torch.data import make_loader
    from uvc.torch.introspect import spec_from_model
    from uvc.torch.pipeline import load_model
    from uvc.torch.train import evaluate
    out = Path(args.out)
    cache = out.with_suffix("")
    dense = {}
    for m in args.models:
        try:
            dense[m] = load_model(m)
        except FileNotFoundError as e:
            parser.error(str(e))
        dense[m][0].eval()
    keys = {(m, b, s, r): key_of(args, m, b, s, r) for m in args.models for b in args.budgets for s in args.seeds
            for r in args.rows}
    todo = [cell for cell, key in keys.items() if not (cache / key / "result.json").is_file()]
    for cell in keys:
        if cell not in todo:
            print(f"cached: {keys[cell]}")
    # A scratch row needs its uvc row's architecture: run that too when it is not cached.
    for m, b, s, r in list(todo):
        uvc_key = key_of(args, m, b, s, "uvc")
        if r == "uvc_scratch" and (m, b, s, "uvc") not in todo and not (cache / uvc_key / "result.json").is_file():
            todo.insert(todo.index((m, b, s, r)), (m, b, s, "uvc"))
    # Every pruned starting point first: a budget a baseline cannot reach stops the run before any training.
    starts = {}
    for m, b, s, r in todo:
        if r in ("uvc_prune", "tp_l2", "tp_taylor", "uniform"):
            calibration = calibration_batches(args.calibration, spec_from_model(dense[m][0]), seed=s)
            try:
                starts[m, b, s, r] = start_model(r, dense[m][0], b, calibration)
            except ValueError as e:
                parser.error(f"--rows {r} --budgets {b} (model {m}): the baseline reaches no model at or below the "
                             f"budget: {e}")
    data = json.loads(out.read_text()) if out.exists() else {}
    settings = {k: v for k, v in vars(args).items() if k != "solver"}
    settings["qk_keep"] = {("other" if b is None else f"{b:g}"): v for b, v in args.qk_keep.items()}
    data.update(benchmark="quality", settings=settings)
    data.setdefault("dense", {})
    data.setdefault("rows", {})
    for m in args.models:
        model, _ = dense[m]
        spec = spec_from_model(model)
        x = torch.zeros(1, spec.in_channels, *spec.image_size)
        for s in args.seeds:
            name = dense_key(args, m, s)
            if name not in data["dense"]:
                test = make_loader("fashion-mnist", "test", 500, subset=args.eval_subset, seed=s,
                                   image_size=spec.image_size, in_chans=spec.in_channels)
                data["dense"][name] = {"acc": evaluate(model, test, torch.device("cpu")),
                                       "macs": count_macs(model, x)["macs"],
                                       "params": sum(p.numel() for p in model.parameters())}
    for m, b, s, r in todo:
        key = key_of(args, m, b, s, r)
        print(f"training: {key}", flush=True)
        folder = cache / key
        entry = run_row(args, m, dense[m][1], b, s, r, folder, starts.get((m, b, s, r)),
                        cache / key_of(args, m, b, s, "uvc"))
        entry["ratio"] = entry["macs"] / data["dense"][dense_key(args, m, s)]["macs"]
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(entry, indent=1))
        tmp.replace(folder / "result.json")
    for key in keys.values():
        data["rows"][key] = json.loads((cache / key / "result.json").read_text())
    data["margins"] = margins(args, data, keys)
    if not args.no_latency:
        measure_latency(args, data, keys, cache, {m: dense[m][0] for m in args.models}, tuple(x.shape[1:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print_table(args, data, keys)
    print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()

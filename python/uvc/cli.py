"""The `uvc` command line: `uvc flops`, and the compression pipeline commands."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cost as cost_mod
from .plan import ArchPlan
from .report import cost_table
from .spec import ViTSpec, spec_names

__all__ = ["main"]


def _spec_and_plan(model: str, plan_path: str | None) -> tuple[ViTSpec, ArchPlan]:
    """MODEL is a known name, a plan JSON, or an exported model folder (its arch.json)."""
    path = Path(model)
    if model in spec_names():
        spec = ViTSpec.from_name(model)
        plan = None
    elif path.is_dir() and (path / "arch.json").exists():
        arch_path = path / "arch.json"
        try:
            plan = ArchPlan.from_dict(json.loads(arch_path.read_text())["plan"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SystemExit(f"uvc flops: arch.json at {arch_path} is truncated or not JSON: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            what = f"it lacks key {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
            raise SystemExit(f"uvc flops: arch.json at {arch_path} does not hold a valid plan: {what}") from None
        spec = plan.spec
    elif path.is_file():
        plan = ArchPlan.load(path)
        spec = plan.spec
    else:
        raise SystemExit(f"uvc flops: MODEL {model!r} is neither a known model ({', '.join(spec_names())}) "
                         "nor a plan JSON nor an exported model folder")
    if plan_path is not None:
        plan = ArchPlan.load(plan_path)
        if plan.spec.to_dict() | {"name": None} != spec.to_dict() | {"name": None}:
            raise SystemExit(f"uvc flops: the plan in {plan_path} was made for a different architecture than {model}")
    return spec, plan if plan is not None else ArchPlan.dense(spec)


def cmd_flops(args: argparse.Namespace) -> int:
    spec, plan = _spec_and_plan(args.model, args.plan)
    report = cost_mod.count(spec, plan, args.convention)
    dense = cost_mod.count(spec, None, args.convention)
    if args.json:
        out = report.to_dict() | {"model": args.model, "dense_macs": dense.macs, "ratio": report.macs / dense.macs}
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.model}  (convention: {args.convention}; MACs = multiply-accumulates)")
        print(cost_table(report, plan))
        print(f"ratio to dense: {100 * report.macs / dense.macs:.2f}% of {dense.macs / 1e9:.4f} GMACs")
    return 0


def _train_flags(p: argparse.ArgumentParser, stage: int) -> None:
    """Flags shared by both stages, spelled as in the original UVC scripts where they mean the same."""
    p.add_argument("--config", help="JSON file of settings (keys as the long flags, '_' for '-'); flags override it")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder root with train/ and val/")
    p.add_argument("--data-dir", dest="data_dir", help="folder with the Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--subset", type=int, help="train on this many images of a seeded shuffle (quick runs)")
    p.add_argument("--eval-subset", dest="eval_subset", type=int, help="evaluate on this many test images")
    p.add_argument("--train_batch_size", "--batch-size", dest="train_batch_size", type=int, default=128)
    p.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=1e-4 if stage == 1 else 5e-4)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.0 if stage == 1 else 0.05)
    p.add_argument("--distillation-type", dest="distillation_type", choices=("none", "soft", "hard"), default="soft")
    p.add_argument("--distillation-alpha", dest="distillation_alpha", type=float, default=0.1)
    p.add_argument("--distillation-tau", dest="distillation_tau", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="every random choice flows from this seed")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", required=False, default="runs/uvc")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its checkpoint")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    settings = dict(vars(args))
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {args.config}: cannot read JSON settings ({e})") from None
        defaults = {a.dest: a.default for a in parser._actions}
        for key, value in config.items():
            key = key.replace("-", "_")
            if key not in defaults:
                raise ValueError(f"--config {args.config}: unknown setting {key!r}")
            if settings.get(key) == defaults[key]:
                settings[key] = value
    for key in ("func", "command", "config"):
        settings.pop(key, None)
    return settings


def _flag01(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def _epochs_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like '1,5,9', got {text!r}") from None


def cmd_compress(args: argparse.Namespace) -> int:
    from .torch.pipeline import compress
    settings = _settings(args, args.parser)
    if not settings.pop("enable_pruning"):
        settings.update(prune_heads=False, prune_dims=False, prune_neurons=False)
    settings["skip_blocks"] = settings.pop("enable_block_gating")
    settings["prune_tokens"] = settings.pop("enable_patch_gating")
    summary = compress(**settings)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .torch.pipeline import finetune
    summary = finetune(**_settings(args, args.parser))
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .torch.demo import evaluate_models
    evaluate_models(args.models, data=args.data, data_dir=args.data_dir, eval_subset=args.eval_subset,
                    batch_sizes=tuple(args.latency_batch), json_path=args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # Flags left out keep each method's own defaults.
    settings = {k: v for k, v in _settings(args, args.parser).items() if v is not None}
    if settings.pop("method") == "usdc":
        from .torch.usdc.demo import run_usdc_demo
        if "budget" in settings:
            settings["target"] = settings.pop("budget")
        run_usdc_demo(**settings)
        return 0
    from .torch.demo import run_demo
    run_demo(**settings)
    return 0


def cmd_usdc_search(args: argparse.Namespace) -> int:
    from .torch.usdc.pipeline import search
    settings = _settings(args, args.parser)
    settings["static"], settings["dynamic"] = settings.pop("static_search"), settings.pop("dynamic_search")
    print(json.dumps(search(**settings), indent=1))
    return 0


def cmd_usdc_finetune(args: argparse.Namespace) -> int:
    from .torch.usdc.pipeline import finetune
    summary = finetune(**_settings(args, args.parser))
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=1))
    return 0


def _usdc_budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=float, default=0.6,
                   help="wanted average MACs over the dense MACs, gate networks included")
    p.add_argument("--gamma", type=float, default=100.0, help="weight of the resource loss gamma*(F - target)^2")
    p.add_argument("--budget-mode", dest="budget_mode", choices=("penalty", "dual"), default="penalty",
                   help="penalty: the paper's gamma*(F - target)^2; dual: UVC-style z*(F - target), z by dual ascent")
    p.add_argument("--dual-lr", dest="dual_lr", type=float, default=1.0, help="step of z per optimizer step (dual mode)")
    p.add_argument("--gate-lr", dest="gate_lr", type=float, default=0.03, help="learning rate of the gate networks")
    p.add_argument("--convention", choices=sorted(cost_mod.CONVENTIONS), default="uvc", help="what the MACs count")


def _add_usdc_commands(sub) -> None:
    """`uvc usdc-search` and `uvc usdc-finetune`: the two USDC stages (seed 002)."""
    p = sub.add_parser("usdc-search", help="USDC stage 1: search static keep probabilities and dynamic group "
                                           "gates under the budget, prune the static part, keep the best gates")
    p.add_argument("--model", default="demo", help="'demo' (the shipped Fashion-MNIST ViT) or a timm model name")
    p.add_argument("--checkpoint", help="weights for --model (safetensors or torch)")
    p.add_argument("--num_epochs", "--epochs", dest="num_epochs", type=int, default=2)
    p.add_argument("--static", dest="static_search", type=_flag01, default=True,
                   help="1: search static keep probabilities of heads, neuron groups and block parts")
    p.add_argument("--dynamic", dest="dynamic_search", type=_flag01, default=True, help="1: search dynamic gates")
    p.add_argument("--grouping", choices=("halving", "sample", "batch", "mixed"), default="mixed",
                   help="how training batches are cut for the gates: mixed (half the batch in halving groups, half "
                        "per sample; the most batch-size-robust in the demo), USDC's halving groups, per sample, "
                        "per batch")
    p.add_argument("--static-mode", dest="static_mode", choices=("sample", "softmax"), default="sample",
                   help="the forward pass multiplies by a straight-through keep sample, or by a0 as in the paper")
    p.add_argument("--arch-lr", dest="arch_lr", type=float, default=0.1, help="learning rate of the architecture logits")
    p.add_argument("--gate-kinds", dest="gate_kinds", type=lambda t: tuple(t.split(",")),
                   default=("linear", "mlp_ln", "conv1d", "mlp_bn"), help="comma-separated gate network menu")
    p.add_argument("--gate-hidden", dest="gate_hidden", type=int, default=16)
    p.add_argument("--gate-init", dest="gate_init", type=float, default=2.0, help="initial log-odds of running")
    p.add_argument("--keep-init", dest="keep_init", type=float, default=0.95, help="initial static keep probability")
    p.add_argument("--neuron-group-size", dest="neuron_group_size", type=int, default=8)
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the gate and static samples")
    p.add_argument("--static-target", dest="static_target", type=float,
                   help="also pull the static part alone to this ratio of the dense MACs (fixes the split)")
    _usdc_budget_flags(p)
    _train_flags(p, 1)
    p.set_defaults(func=cmd_usdc_search, parser=p, output_dir="runs/usdc")

    p = sub.add_parser("usdc-finetune", help="USDC stage 2: fine-tune the pruned model with its dynamic gates")
    p.add_argument("--model", required=True, help="folder written by uvc usdc-search (its stage1_model/)")
    p.add_argument("--teacher", default="demo", help="the dense teacher: 'demo' or a timm model name")
    p.add_argument("--teacher-checkpoint", dest="teacher_checkpoint", help="weights of --teacher")
    p.add_argument("--epochs", type=int, default=2)
    _usdc_budget_flags(p)
    _train_flags(p, 2)
    p.set_defaults(func=cmd_usdc_finetune, parser=p, output_dir="runs/usdc")


def cmd_report(args: argparse.Namespace) -> int:
    from .plots import plot_architecture, plot_training_log
    run = Path(args.run)
    plan = ArchPlan.load(run / "plan.json")
    print(cost_table(cost_mod.count(plan.spec, plan), plan))
    print("wrote", plot_architecture(plan, run / "architecture.png", title=str(run)))
    log = run / "stage1" / "log.jsonl"
    if log.exists():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        print("wrote", plot_training_log(records, run / "stage1_log.png"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uvc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="count MACs and FLOPs of a model or plan, per layer")
    p.add_argument("model", help=f"model name ({', '.join(spec_names())}), plan JSON, or exported model folder")
    p.add_argument("--plan", help="a plan JSON for MODEL (default: the dense model)")
    p.add_argument("--convention", choices=sorted(cost_mod.CONVENTIONS), default="uvc",
                   help="what to count besides matmuls: uvc (the paper's), fvcore (adds LayerNorm and head), full")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("compress", help="stage 1: search the architecture under the budget and export it")
    p.add_argument("--model", "--model_type", dest="model", default="demo",
                   help="'demo' (the shipped Fashion-MNIST ViT) or a timm model name")
    p.add_argument("--checkpoint", "--model_path", dest="checkpoint", help="weights for --model (safetensors or torch)")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the dense MACs to keep, in (0, 1]")
    p.add_argument("--num_epochs", "--epochs", dest="num_epochs", type=int, default=30)
    p.add_argument("--convention", choices=sorted(cost_mod.CONVENTIONS), default="uvc", help="what the budget counts")
    p.add_argument("--enable_pruning", type=_flag01, default=True,
                   help="1: prune heads, value dims and neurons (each as its own flag allows); 0: none of them")
    for axis, what in (("heads", "attention heads"), ("dims", "value/proj dims"), ("neurons", "MLP neurons")):
        p.add_argument(f"--prune_{axis}", type=_flag01, default=True, help=f"1: {what} may be removed")
    p.add_argument("--enable_block_gating", type=_flag01, default=True, help="1: learn to skip block parts")
    p.add_argument("--enable_patch_gating", type=_flag01, default=False,
                   help="1: learn how many tokens each block keeps (the rest fused into one token by class attention)")
    p.add_argument("--gate_granularity", choices=("block", "part"), default="block",
                   help="one skip gate per block (as UVC) or one per MHSA / MLP part")
    p.add_argument("--gating_weight", type=float, default=5e-4)
    p.add_argument("--glr", dest="gate_lr", type=float, default=0.1, help="learning rate of the gate logits")
    p.add_argument("--zlr_schedule_list", dest="zlr_schedule", type=_epochs_list, default=(1, 5, 9, 13, 17))
    p.add_argument("--warmup_epochs", type=float, default=5.0, help="epochs of weight-only training first")
    p.add_argument("--z_grad_clip", type=float, default=0.5)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--eps_decay", type=float, default=0.92)
    _train_flags(p, 1)
    p.set_defaults(func=cmd_compress, parser=p)

    p = sub.add_parser("finetune", help="stage 2: fine-tune the exported architecture with distillation")
    p.add_argument("--model", required=True, help="folder written by uvc compress (its stage1_model/)")
    p.add_argument("--teacher", default="demo", help="the dense teacher: 'demo' or a timm model name")
    p.add_argument("--teacher-checkpoint", dest="teacher_checkpoint", help="weights of --teacher")
    p.add_argument("--epochs", type=int, default=120)
    _train_flags(p, 2)
    p.set_defaults(func=cmd_finetune, parser=p)

    p = sub.add_parser("evaluate", help="accuracy, MACs, parameters and CPU latency of one or more models")
    p.add_argument("models", nargs="+", help="'demo' or folders written by uvc compress / finetune")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--eval-subset", dest="eval_subset", type=int)
    p.add_argument("--latency-batch", dest="latency_batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="compress the shipped Fashion-MNIST ViT end to end (UVC to 50%% of its "
                                    "MACs, or USDC's comparison with --method usdc)")
    p.add_argument("--method", choices=("uvc", "usdc"), default="uvc",
                   help="uvc: UVC to the budget; usdc: static, dynamic and static + dynamic at the same average MACs")
    p.add_argument("--budget", type=float, help="fraction of the dense MACs to keep (default 0.5 uvc, 0.6 usdc)")
    p.add_argument("--search-epochs", dest="search_epochs", type=int, help="default 4 (uvc), 2 (usdc)")
    p.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, help="default 4 (uvc), 2 (usdc)")
    p.add_argument("--subset", type=int, help="training images per epoch (default 20000 uvc, 10000 usdc; 60000 = all)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", help="default runs/demo (uvc), runs/usdc_demo (usdc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--tokens", action="store_true", help="also learn how many tokens each block keeps")
    p.add_argument("--config", help="JSON file of settings")
    p.add_argument("--usdc-methods", dest="methods", type=lambda t: tuple(t.split(",")),
                   help="usdc: comma-separated rows to run, of uvc,static,dynamic,usdc,usdc_sample,usdc_mixed "
                        "(default all)")
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", help="usdc: inference batch sizes (1 8 256)")
    p.add_argument("--eval-subset", dest="eval_subset", type=int, help="usdc: test images to evaluate (default all)")
    p.add_argument("--gamma", type=float, help="usdc: weight of the resource loss (100)")
    p.add_argument("--budget-mode", dest="budget_mode", choices=("penalty", "dual"), help="usdc: budget term (penalty)")
    p.add_argument("--static-target", dest="static_target", type=float,
                   help="usdc: the static part's ratio of the dense MACs in static + dynamic runs (0.75)")
    p.set_defaults(func=cmd_demo, parser=p)

    _add_usdc_commands(sub)

    p = sub.add_parser("report", help="per-layer table and plots of a finished run")
    p.add_argument("run", help="the --output_dir of uvc compress")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"uvc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

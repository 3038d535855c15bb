"""The `uvc` command line: `uvc flops`, and the compression pipeline commands."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cost as cost_mod
from .plan import ArchPlan
from .report import cost_table
from .settings import COMPRESS, DEMO, FINETUNE, PRUNE, SETTINGS_FILE, USDC_FINETUNE, USDC_SEARCH, Stage, load_config
from .spec import ViTSpec, spec_names

__all__ = ["main"]


def _spec_and_plan(model: str, plan_path: str | None, timm_kwargs: dict) -> tuple[ViTSpec, ArchPlan]:
    """MODEL is a preset name, a plan JSON, an exported model folder (its arch.json), or any
    timm model name the torch adapter supports (built offline, ``pretrained=False``)."""
    path = Path(model)
    if model in spec_names() and not timm_kwargs:
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
        spec, plan = _timm_spec(model, timm_kwargs), None
    if plan_path is not None:
        plan = ArchPlan.load(plan_path)
        if plan.spec.to_dict() | {"name": None} != spec.to_dict() | {"name": None}:
            raise SystemExit(f"uvc flops: the plan in {plan_path} was made for a different architecture than {model}")
    return spec, plan if plan is not None else ArchPlan.dense(spec)


def _timm_spec(model: str, timm_kwargs: dict) -> ViTSpec:
    """The spec of timm model ``model``, built with random weights."""
    try:
        import timm
        from .torch.introspect import spec_from_model
    except ImportError:
        raise SystemExit(f"uvc flops: MODEL {model!r} is not a preset ({', '.join(spec_names())}), a plan JSON or an "
                         "exported folder; timm model names need the torch extra: pip install 'uvc[torch]'") from None
    if not timm.is_model(model):
        what = "a path that does not exist" if ("/" in model or model.endswith(".json")) else "not a timm model name"
        raise SystemExit(f"uvc flops: MODEL {model!r} is {what}; expected a timm model name, a plan JSON or an "
                         "exported model folder")
    return spec_from_model(timm.create_model(model, pretrained=False, **timm_kwargs)).replace(name=model)


def cmd_flops(args: argparse.Namespace) -> int:
    kwargs = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v is not None}
    spec, plan = _spec_and_plan(args.model, args.plan, kwargs)
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


def _flag01(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_classes\": 2}}', got {text!r}")
    return value


_ELEMENT = {"floats": float, "ints": int, "strs": str}


def _add_stage(sub, stage: Stage, func) -> None:
    """A subcommand whose flags are `stage`'s settings (given flags only: defaults are the stage's)."""
    p = sub.add_parser(stage.name, help=stage.help, argument_default=argparse.SUPPRESS,
                       description=f"{stage.help}. Settings: flags, or --config (flags override the file).")
    p.add_argument("--config", help="JSON or TOML (.toml) file of settings, keys as the setting names "
                                    f"(e.g. the {SETTINGS_FILE} a run wrote); flags override it")
    for s in stage.settings:
        flags = list(dict.fromkeys((*s.cli_flags, "--" + s.name)))
        default = "" if s.default is None else f" (default {s.shown_default()})"
        kw: dict = dict(dest=s.name, help=s.help.replace("%", "%%") + (f" [{s.unit}]" if s.unit else "") + default)
        if s.type is bool and not s.binary:
            kw["action"] = argparse.BooleanOptionalAction
        elif s.type is bool:
            kw.update(type=_flag01, metavar="0|1")
        elif s.type in _ELEMENT:
            kw.update(nargs="+", metavar=_ELEMENT[s.type].__name__.upper())
        elif s.type is dict:
            kw.update(type=_json_object, metavar="JSON")
        else:
            kw.update(type=s.type, choices=s.choices)
        p.add_argument(*flags, **kw)
    p.set_defaults(func=func, stage=stage)


def _stage_settings(args: argparse.Namespace) -> dict:
    """The stage's settings: its defaults, then the --config file, then the flags given."""
    stage: Stage = args.stage
    given = {}
    if getattr(args, "config", None):
        given = load_config(args.config)
        stage.resolve(given, source=f"--config {args.config}")  # names the file in errors
    for name in stage.names:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        kind = stage[name].type
        if kind in _ELEMENT:  # space- or comma-separated
            try:
                value = tuple(_ELEMENT[kind](t) for v in value for t in v.split(",") if t.strip())
            except ValueError:
                raise ValueError(f"--{name.replace('_', '-')}: expected {_ELEMENT[kind].__name__} values, got "
                                 f"{' '.join(value)!r}") from None
        given[name] = value
    return stage.resolve(given, source=f"uvc {stage.name}")


def cmd_stage(args: argparse.Namespace) -> int:
    """Runs a training stage with its settings and prints its summary."""
    from .torch.pipeline import compress, finetune, prune
    from .torch.usdc import pipeline as usdc_pipeline
    run = {"compress": compress, "finetune": finetune, "prune": prune, "usdc-search": usdc_pipeline.search,
           "usdc-finetune": usdc_pipeline.finetune}[args.stage.name]
    summary = run(**_stage_settings(args))
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .torch.demo import evaluate_models
    evaluate_models(args.models, data=args.data, data_dir=args.data_dir, eval_subset=args.eval_subset,
                    batch_sizes=tuple(args.latency_batch), json_path=args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # Settings left out (None) keep each method's own defaults.
    settings = {k: v for k, v in _stage_settings(args).items() if v is not None}
    if settings.pop("method") == "usdc":
        from .torch.usdc.demo import run_usdc_demo
        if "budget" in settings:
            settings["target"] = settings.pop("budget")
        run_usdc_demo(**settings)
        return 0
    from .torch.demo import run_demo
    run_demo(**settings)
    return 0


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
    p.add_argument("model", help=f"a model name ({', '.join(spec_names())}, or any timm ViT name with the torch "
                                 "extra), a plan JSON, or an exported model folder")
    p.add_argument("--img-size", dest="img_size", type=int, help="image size of a timm model (timm's img_size)")
    p.add_argument("--num-classes", dest="num_classes", type=int, help="classes of a timm model's head")
    p.add_argument("--plan", help="a plan JSON for MODEL (default: the dense model)")
    p.add_argument("--convention", choices=sorted(cost_mod.CONVENTIONS), default="uvc",
                   help="what to count besides matmuls: uvc (the paper's), fvcore (adds LayerNorm and head), full")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_flops)

    for stage in (COMPRESS, FINETUNE, PRUNE, USDC_SEARCH, USDC_FINETUNE):
        _add_stage(sub, stage, cmd_stage)
    _add_stage(sub, DEMO, cmd_demo)

    p = sub.add_parser("evaluate", help="accuracy, MACs, parameters and CPU latency of one or more models")
    p.add_argument("models", nargs="+", help="'demo' or folders written by uvc compress / finetune")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--eval-subset", dest="eval_subset", type=int)
    p.add_argument("--latency-batch", dest="latency_batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=cmd_evaluate)

    # Parsed by uvc.torch.profile (see `main`): listed here for `uvc --help` only.
    sub.add_parser("profile", add_help=False,
                   help="measure a latency table (ms of every block part a plan can change) on a device")

    p = sub.add_parser("report", help="per-layer table and plots of a finished run")
    p.add_argument("run", help="the --output_dir of uvc compress")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["profile"]:
        # Its own parser and errors; importing it imports torch, which no other command's parsing needs.
        from .torch.profile import profile_main
        return profile_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"uvc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

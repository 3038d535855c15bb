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
        arch = json.loads((path / "arch.json").read_text())
        plan = ArchPlan.from_dict(arch["plan"])
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

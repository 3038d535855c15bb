#!/usr/bin/env python3
"""Builds each timm configuration of `CONFIGS` offline (random weights) and checks what uvc does with it.

    python scripts/arch_matrix.py                      # full size, print the table, write the JSON
    python scripts/arch_matrix.py --small --plans 3    # tiny models (what the test runs)
    python scripts/arch_matrix.py --readme README.md   # rewrite README's table
    python scripts/arch_matrix.py --readme README.md --check   # exit 1 if README's table is out of date

A configuration is *refused* when `uvc.torch.spec_from_model` raises `UnsupportedModelError`
(or uvc raises on purpose an error naming the module, "model..."); a refused row is not a
failure. A supported one must pass every check:

  dense   the dense `SlimViT` export has the source model's logits (max abs diff <= 1e-4, float32)
  plans   for N seeded random plans: the cost model's MACs under the "fvcore" convention equal
          `count_macs` and `fvcore_macs` on the exported `SlimViT` exactly (integer MACs), and the
          source model with the plan's masks applied (the Compressor's hooks: proj / fc2 input
          masks, branch gates) has the exported model's logits (max abs diff <= 1e-4)
  save    `save` -> `load` gives identical logits
  onnx    `export_onnx` runs in onnxruntime and matches (max abs diff <= 1e-4)
  tokens  for N seeded random plans that drop tokens: the three MAC counts agree and the masked
          source model dropping tokens the same way has the exported model's logits (float64,
          max abs diff <= 1e-8); "n/a" where uvc refuses token dropping for the model

The exit status is 1 when a row FAILs (or, with --check, when README's table differs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import timm
import torch
from timm.layers import SwiGLU, SwiGLUPacked
from torch import nn

import uvc
from uvc.torch import (SlimViT, UnsupportedModelError, blocks, count_macs, export_onnx, fvcore_macs, load, save,
                       spec_from_model)
from uvc.torch.slim import reduce_tokens

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- arch-matrix:start -->"
END = "<!-- arch-matrix:end -->"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "arch_matrix.json"

# (label, timm model name, keyword arguments of timm.create_model)
CONFIGS: list[tuple[str, str, dict]] = [
    ("DeiT-S", "deit_small_patch16_224", {}),
    ("DeiT-S distilled", "deit_small_distilled_patch16_224", {}),
    ("DeiT III-S (LayerScale)", "deit3_small_patch16_224", {}),
    ("ViT-S", "vit_small_patch16_224", {}),
    ("ViT-B", "vit_base_patch16_224", {}),
    ("ViT-L", "vit_large_patch16_224", {}),
    ("ViT-S, no qkv bias", "vit_small_patch16_224", dict(qkv_bias=False)),
    ("DINOv2 ViT-S/14 (LayerScale)", "vit_small_patch14_dinov2", {}),
    ("CLIP ViT-B/16 (pre-norm)", "vit_base_patch16_clip_224", {}),
    ("ViT-M, average pooling", "vit_medium_patch16_gap_256", {}),
    ("ViT-M, registers + average pooling", "vit_medium_patch16_reg4_gap_256", {}),
    ("ViT-S, no class token, average pooling", "vit_small_patch16_224", dict(class_token=False, global_pool="avg")),
    ("ViT-S, fc_norm", "vit_small_patch16_224", dict(fc_norm=True)),
    ("ViT-S, qk_norm", "vit_small_patch16_224", dict(qk_norm=True)),
    ("SigLIP ViT-B (attention-pool head)", "vit_base_patch16_siglip_224", {}),
    ("ViT-S, GluMlp (SwiGLUPacked)", "vit_small_patch16_224", dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)),
    ("ViT-S, SwiGLU", "vit_small_patch16_224", dict(mlp_layer=SwiGLU, act_layer=nn.SiLU)),
    ("ViT-S, GELU-tanh", "vit_small_patch16_224", dict(act_layer="gelu_tanh")),
    ("ViT-S, QuickGELU", "vit_small_patch16_224", dict(act_layer="quick_gelu")),
    ("ViT-S RoPE (Eva)", "vit_small_patch16_rope_224", {}),
    ("EVA-02-S (Eva)", "eva02_small_patch14_224", {}),
]

# --small: a tiny model with the same feature flags (image = 4 x 4 patches).
SMALL = dict(depth=2, embed_dim=64, num_heads=4)
SMALL_PATCHES = 4
ATOL = 1e-4          # float32 logits
ATOL_FLOAT64 = 1e-8  # float64 logits (token drops: no near-ties in the ranking)
BATCH = 2


def patch_size(name: str) -> int:
    """The patch size in a timm model name ("..._patch16_..." -> 16)."""
    found = re.search(r"patch(\d+)", name)
    if found is None:
        raise ValueError(f"arch_matrix: {name!r} does not name its patch size (expected '..._patch<N>_...')")
    return int(found.group(1))


def build_kwargs(name: str, kwargs: dict, small: bool) -> dict:
    """The keyword arguments of timm.create_model for one configuration (``small``: tiny sizes)."""
    if not small:
        return dict(kwargs)
    return {**kwargs, **SMALL, "img_size": SMALL_PATCHES * patch_size(name)}


def kwargs_text(kwargs: dict) -> str:
    """``qkv_bias=False, act_layer=SiLU``: keyword arguments as a user would write them."""
    def value(v: Any) -> str:
        if isinstance(v, type):
            return v.__name__
        # timm's SwiGLUPacked is a functools.partial: name it as timm.layers does.
        return next((n for n, o in vars(timm.layers).items() if o is v and not n.startswith("_")), repr(v))
    return ", ".join(f"{k}={value(v)}" for k, v in kwargs.items())


def seed_of(label: str) -> int:
    """A seed fixed by the label, so a row's result does not depend on the rows before it."""
    return zlib.crc32(label.encode())


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Seeded random weights with O(1) activations: Linear / Conv weights N(0, 1/fan_in), LayerNorm
    weights 1 + N(0, 0.1²), biases N(0, 0.1²), everything else (tokens, position embedding,
    LayerScale) N(0, 0.5²). Peaked attention, so a wrong head or token changes the logits."""
    gen = torch.Generator().manual_seed(seed)

    def fill(p: torch.Tensor, mean: float, std: float) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=gen, dtype=torch.float64))

    for p in model.parameters():
        fill(p, 0.0, 0.5)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fill(m.weight, 0.0, m.weight[0].numel() ** -0.5)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            fill(m.weight, 1.0, 0.1)
        else:
            continue
        if m.bias is not None:
            fill(m.bias, 0.0, 0.1)


def images(spec: uvc.ViTSpec, seed: int, dtype=torch.float32) -> torch.Tensor:
    """A seeded batch of ``BATCH`` random images of the spec's size."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, spec.in_channels, *spec.image_size, generator=gen).to(dtype)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of two logit tensors (inf when their shapes differ)."""
    if a.shape != b.shape:
        return math.inf
    return float((a.double() - b.double()).abs().max())


# The source model with a plan's masks: what the Compressor's hooks do, fixed to one plan.

def ranking_attention(attn: nn.Module, qkv: torch.Tensor, heads: tuple[int, ...], class_token: bool) -> torch.Tensor:
    """(B, N) from a timm Attention's qkv output, averaged over ``heads``: softmax(q_cls·Kᵀ·scale)
    with a class token, else the attention each token receives (every query's row, averaged)."""
    b, n, _ = qkv.shape
    h, hd, width = attn.num_heads, attn.head_dim, attn.attn_dim
    q = qkv[:, :, :width].reshape(b, n, h, hd).transpose(1, 2)
    k = qkv[:, :, width:2 * width].reshape(b, n, h, hd).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rows = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    received = rows[:, :, 0] if class_token else rows.mean(dim=2)
    return received[:, list(heads)].mean(dim=1)


def dropping_forward(block: nn.Module, seen: dict, prefix: int, tokens_out: int) -> Callable:
    """timm's Block.forward with `reduce_tokens` between the MHSA and the MLP residuals."""
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = x + block.ls1(block.attn(block.norm1(x), *args, **kwargs))
        x = reduce_tokens(x, seen.pop("ranking"), prefix, tokens_out)
        return x + block.ls2(block.mlp(block.norm2(x)))
    return forward


@contextlib.contextmanager
def masked(model: nn.Module, plan: uvc.ArchPlan) -> Iterator[nn.Module]:
    """``model`` computing what ``plan`` keeps, like the Compressor's hooks: the input of every
    ``attn.proj`` multiplied by its head × value-dim keep mask, the input of every ``mlp.fc2`` by its
    neuron mask, a skipped MHSA / MLP branch (``ls1`` / ``ls2`` output) multiplied by 0, and a block
    after which the plan has fewer tokens dropping them by the kept heads' ranking attention.
    Hooks and forwards are removed on exit."""
    spec, handles, patched = plan.spec, [], []

    def times(mask: torch.Tensor):
        return lambda module, args: (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])

    def gate(value: float):
        return lambda module, args, output: output * value

    try:
        for parts, layer in zip(blocks(model), plan.layers):
            l, blk, attn = parts.index, parts.block, parts.attn
            keep = torch.zeros(attn.attn_dim, device=parts.proj.weight.device)
            for h, dims in zip(layer.heads, layer.v_index):
                keep[[h * attn.head_dim + i for i in dims]] = 1
            neurons = torch.zeros(parts.fc2.in_features, device=keep.device)
            neurons[list(layer.neurons)] = 1
            handles += [parts.proj.register_forward_pre_hook(times(keep)),
                        parts.fc2.register_forward_pre_hook(times(neurons)),
                        blk.ls1.register_forward_hook(gate(float(layer.attn))),
                        blk.ls2.register_forward_hook(gate(float(layer.mlp)))]
            after = plan.layers[l + 1].tokens if l + 1 < spec.depth else layer.tokens
            if after < layer.tokens:
                seen: dict = {}
                handles.append(parts.qkv.register_forward_hook(
                    lambda m, args, out, attn=attn, heads=layer.heads, seen=seen:
                    seen.update(ranking=ranking_attention(attn, out, heads, spec.class_token))))
                blk.forward = dropping_forward(blk, seen, spec.prefix_tokens, after)
                patched.append(blk)
        yield model
    finally:
        for h in handles:
            h.remove()
        for blk in patched:
            blk.__dict__.pop("forward", None)


# The checks. Each returns a dict with "result" ("pass" / "fail" / "n/a") and its numbers.

def check_dense(model: nn.Module, spec: uvc.ViTSpec, x: torch.Tensor) -> dict:
    """The dense export's logits against the source model's."""
    slim = SlimViT.from_timm(model, uvc.ArchPlan.dense(spec))
    with torch.no_grad():
        diff = max_diff(slim(x), model(x))
    return {"result": "pass" if diff <= ATOL else "fail", "max_abs_diff": diff, "atol": ATOL}


def check_plan(model: nn.Module, plan: uvc.ArchPlan, x: torch.Tensor, atol: float) -> dict:
    """One plan: MACs of the cost model ("fvcore" convention), `count_macs` and `fvcore_macs` on the
    exported model (one image), and the masked source model's logits against the exported model's."""
    slim = SlimViT.from_timm(model, plan)
    macs = {"cost_model": uvc.count(plan.spec, plan, convention="fvcore").macs,
            "count_macs": count_macs(slim, x[:1])["macs"], "fvcore_macs": fvcore_macs(slim, x[:1])}
    with torch.no_grad(), masked(model, plan) as reference:
        diff = max_diff(slim(x), reference(x))
    ok = len(set(macs.values())) == 1 and diff <= atol
    return {"result": "pass" if ok else "fail", "macs": macs, "max_abs_diff": diff, "atol": atol,
            "tokens": [l.tokens for l in plan.layers]}


def check_plans(model: nn.Module, plans: list[uvc.ArchPlan], x: torch.Tensor, atol: float = ATOL) -> dict:
    """`check_plan` for each plan; passes when every plan passes."""
    rows = [check_plan(model, plan, x, atol) for plan in plans]
    return {"result": "pass" if all(r["result"] == "pass" for r in rows) else "fail", "plans": rows}


def check_save(slim: SlimViT, x: torch.Tensor) -> dict:
    """`save` then `load`: identical logits."""
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        save(slim, Path(folder) / "model")
        diff = max_diff(load(Path(folder) / "model")(x), slim(x))
    return {"result": "pass" if diff == 0 else "fail", "max_abs_diff": diff, "atol": 0.0}


def check_onnx(slim: SlimViT, x: torch.Tensor) -> dict:
    """`export_onnx` run in onnxruntime (CPU) against the model's logits."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(slim, Path(folder) / "model.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    with torch.no_grad():
        diff = max_diff(out, slim(x))
    return {"result": "pass" if diff <= ATOL else "fail", "max_abs_diff": diff, "atol": ATOL}


def token_drop_refusal(spec: uvc.ViTSpec) -> str | None:
    """Why uvc refuses token dropping for ``spec`` (None when a plan may drop tokens): the plan
    whose block 0 drops to the fewest tokens allowed must be valid."""
    if spec.depth < 2:
        return "a single block: no block can drop tokens for a later one"
    dense = uvc.ArchPlan.dense(spec)
    fewest = spec.prefix_tokens + 2
    try:
        uvc.ArchPlan(spec, (dense.layers[0],) + tuple(
            uvc.LayerPlan(l.heads, l.v_index, l.neurons, fewest) for l in dense.layers[1:]))
    except ValueError as e:
        return str(e)
    return None


def token_plans(spec: uvc.ViTSpec, rng: np.random.Generator, n: int) -> list[uvc.ArchPlan]:
    """``n`` random plans that each drop tokens after at least one block."""
    plans = []
    for _ in range(100 * n):
        plan = uvc.random_plan(spec, rng, drop_prob=0.7)
        if any(b.tokens < a.tokens for a, b in zip(plan.layers, plan.layers[1:])):
            plans.append(plan)
            if len(plans) == n:
                return plans
    raise RuntimeError(f"arch_matrix: found {len(plans)} of {n} random plans of {spec} that drop tokens "
                       "in 100 tries each")


def check_tokens(model: nn.Module, spec: uvc.ViTSpec, rng: np.random.Generator, n: int, seed: int) -> dict:
    """`check_plans` on ``n`` plans that drop tokens, in float64 (changes ``model`` to float64)."""
    why = token_drop_refusal(spec)
    if why is not None:
        return {"result": "n/a", "reason": why}
    plans = token_plans(spec, rng, n)
    try:
        return check_plans(model.double(), plans, images(spec, seed, torch.float64), ATOL_FLOAT64)
    except UnsupportedModelError as e:
        return {"result": "n/a", "reason": str(e)}


def run_check(fn: Callable[[], dict]) -> dict:
    """``fn()``, or a failed check carrying the exception when it raised."""
    try:
        return fn()
    except Exception as e:  # a check that crashes is a failed check, with its traceback in the JSON
        return {"result": "fail", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def is_refusal(e: Exception) -> bool:
    """Whether uvc raised ``e`` on purpose to refuse the model: an `UnsupportedModelError`, or an
    error raised inside uvc whose message names the module ("model..." )."""
    if isinstance(e, UnsupportedModelError):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    from_uvc = tb is not None and Path(uvc.__file__).parent in Path(tb.tb_frame.f_code.co_filename).parents
    return from_uvc and names_a_module(str(e))


def names_a_module(message: str) -> bool:
    """Whether a refusal message starts by naming the module: ``model: ...`` or ``model.blocks.0.attn: ...``."""
    return re.match(r"model(\.[\w.]+)?: ", message) is not None


def run_config(label: str, name: str, kwargs: dict, *, small: bool, plans: int) -> dict:
    """Builds one configuration and checks it. Returns its row: ``status`` "pass", "refused"
    (``reason``: uvc's message) or "FAIL" (``failed``: the checks that failed, or the step that
    raised), the checks' numbers under ``checks`` and the wall time in ``seconds``."""
    start = time.perf_counter()
    row: dict[str, Any] = {"label": label, "model": name, "kwargs": kwargs_text(kwargs)}
    seed = seed_of(label)
    try:
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **build_kwargs(name, kwargs, small)).eval()
    except Exception as e:
        return {**row, "status": "FAIL", "failed": ["build"], "error": f"{type(e).__name__}: {e}",
                "seconds": time.perf_counter() - start}
    try:
        spec = spec_from_model(model)
    except Exception as e:
        if is_refusal(e):
            return {**row, "status": "refused", "reason": str(e), "seconds": time.perf_counter() - start}
        return {**row, "status": "FAIL", "failed": ["spec"], "error": f"{type(e).__name__}: {e}",
                "seconds": time.perf_counter() - start}
    randomize(model, seed)
    rng = np.random.default_rng(seed)
    x = images(spec, seed)
    random = [uvc.random_plan(spec, rng, tokens=False) for _ in range(plans)]
    checks = {"dense": run_check(lambda: check_dense(model, spec, x)),
              "plans": run_check(lambda: check_plans(model, random, x))}
    slim = run_check(lambda: {"result": "pass", "model": SlimViT.from_timm(model, random[0])})
    for check, fn in (("save", check_save), ("onnx", check_onnx)):
        checks[check] = run_check(lambda: fn(slim["model"], x)) if "model" in slim else slim
    checks["tokens"] = run_check(lambda: check_tokens(model, spec, rng, plans, seed))
    failed = [k for k, c in checks.items() if c["result"] == "fail"]
    return {**row, "status": "FAIL" if failed else "pass", "failed": failed, "spec": spec.to_dict(),
            "checks": checks, "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs with ``n`` torch threads (unchanged when None), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_matrix(*, small: bool = False, plans: int | None = None, configs=None, threads: int | None = None,
               log: Callable[[str], None] | None = None) -> list[dict]:
    """`run_config` on every configuration (`CONFIGS` by default). ``plans``: random plans per
    check (5 full size, 3 small by default). ``threads``: torch threads; None is 1 for ``small``
    (tiny ops only lose to thread start-up, and far more on a busy machine) and torch's
    setting otherwise. ``log``: called with one line per finished row."""
    plans = (3 if small else 5) if plans is None else plans
    if isinstance(plans, bool) or not isinstance(plans, int) or plans < 1:
        raise ValueError(f"run_matrix: plans must be a positive int, got {plans!r}")
    rows = []
    with torch_threads(1 if threads is None and small else threads):
        for label, name, kwargs in CONFIGS if configs is None else configs:
            rows.append(run_config(label, name, kwargs, small=small, plans=plans))
            if log is not None:
                log(f"{label}: {result_text(rows[-1])} ({rows[-1]['seconds']:.1f} s)")
    return rows


def result_text(row: dict) -> str:
    """"pass", "refused: <uvc's message>" or "FAIL: <failed checks>"."""
    if row["status"] == "refused":
        return f"refused: {row['reason']}"
    if row["status"] == "FAIL":
        return f"FAIL: {', '.join(row['failed'])}"
    return "pass"


def table(rows: list[dict]) -> str:
    """The markdown table: configuration, timm model (with its keyword arguments), result. Only
    what does not vary between machines: no timings, no numbers."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| configuration | timm model | result |", "|---|---|---|"]
    for r in rows:
        call = f"`{r['model']}({r['kwargs']})`" if r["kwargs"] else f"`{r['model']}`"
        lines.append(f"| {cell(r['label'])} | {cell(call)} | {cell(result_text(r))} |")
    return "\n".join(lines)


def readme_block(rows: list[dict]) -> str:
    """The text between (and including) the README markers."""
    return f"{BEGIN}\n{table(rows)}\n{END}"


def replace_block(text: str, block: str, where: Path) -> str:
    """``text`` with its marked block replaced by ``block``; exits naming ``where`` when a marker is missing."""
    if BEGIN not in text or END not in text:
        sys.exit(f"{where}: the markers {BEGIN!r} and {END!r} are missing")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def write_json(rows: list[dict], path: Path, *, small: bool, plans: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"small": small, "plans": plans, "timm": timm.__version__, "torch": torch.__version__,
            "uvc": getattr(uvc, "__version__", None), "rows": rows}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny models (depth 2, width 64, 4x4 patches)")
    parser.add_argument("--plans", type=int, default=None, help="random plans per check (default 5, 3 with --small)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the rows (default {DEFAULT_JSON})")
    parser.add_argument("--readme", type=Path, default=None, help="rewrite the table between the markers in this file")
    parser.add_argument("--check", action="store_true", help="with --readme: only check that its table is up to date")
    args = parser.parse_args(argv)
    if args.check and args.readme is None:
        parser.error("--check needs --readme")
    text = args.readme.read_text() if args.readme is not None else None
    if text is not None:
        replace_block(text, "", args.readme)  # fail on missing markers before the long run
    plans = (3 if args.small else 5) if args.plans is None else args.plans
    rows = run_matrix(small=args.small, plans=plans, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(rows))
    write_json(rows, args.json, small=args.small, plans=plans)
    status = 1 if any(r["status"] == "FAIL" for r in rows) else 0
    if text is not None:
        new = replace_block(text, readme_block(rows), args.readme)
        if args.check:
            if new != text:
                print(f"{args.readme}: the architecture table is out of date; run python scripts/arch_matrix.py "
                      f"--readme {args.readme}", file=sys.stderr)
                status = 1
        elif new != text:
            args.readme.write_text(new)
            print(f"wrote the architecture table of {len(rows)} configurations into {args.readme}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

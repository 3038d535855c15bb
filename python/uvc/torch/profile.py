"""Measured latency of every part a plan can change: the per-device table a latency budget
prices plans with (`uvc.latency.LatencyTable`).

    table = profile(ViTSpec.from_name("deit_small_patch16_224"), device="cuda", batch_size=64,
                    dtype=torch.float16)
    save_table(table, "latency.json")          # uvc profile deit_small_patch16_224 --device cuda ...

Each part is the exported model's own module (`uvc.torch.slim`, random weights: latency does
not depend on them), timed in ms per forward pass of one batch:

- ``attention_ms[i][j][k]``: the MHSA part of a block (``norm1``, `SlimAttention`, LayerScale
  and the residual add) with ``heads[i]`` heads and ``v_dims[j]`` value dims per head
  (queries and keys at the full ``qk_head_dim``), on (B, ``tokens[k]``, D) tokens;
- ``drop_ms[k]``: what a block that drops tokens adds to it with ``tokens[k]`` in (the
  ranking attention and `reduce_tokens`, timed with all heads at full width dropping half of
  the tokens, down to no fewer than prefix + 2, minus the MHSA part at the same tokens; 0 where
  fewer than prefix + 3 tokens leave nothing to drop, in a table of one token count, and where
  the difference is within noise);
- ``mlp_ms[m][k]``: the MLP part (``norm2``, `SlimMlp`, gated if the spec is, LayerScale, the
  residual add) with ``neurons[m]`` hidden units on ``tokens[k]`` tokens;
- ``fixed_ms``: what every plan runs: patch and position embedding, pre-norm, final norm,
  pooling and head(s) (a `SlimViT` whose plan skips every block part);
- ``dense_ms``: the whole dense `SlimViT`, for reference: ``fixed_ms`` plus ``depth`` times the
  dense block parts should come close to it (`additive_dense_ms`);
- ``dense_page_faults``: the dense pass's median minor page faults, 0 when ``device["malloc"]``
  is ``"steady"`` (`uvc.torch.latency.steady_malloc` held freed memory in the process);
- ``chain_ms[k]`` (tables with more than one token count): ``depth`` dense blocks run one after
  the other on ``tokens[k]`` tokens, what the parts cost chained inside a model at that token
  count; `uvc.LatencyTable` scales each token column of the parts by it.

Each value is the median over ``repeats`` passes, ``*_spread_ms`` half the inter-quartile
range. All parts are timed interleaved (every grid point once per pass), so drifts in machine
load hit them alike. ``tokens`` is ``[spec.num_tokens]`` unless token counts are asked for
(``tokens=`` / ``uvc profile --tokens``): such a table prices plans that keep every token.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import numbers
import os
import platform
import sys
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .._files import read_json
from ..latency import FORMAT as LATENCY_FORMAT, LatencyTable
from ..plan import ArchPlan, LayerPlan
from ..spec import ViTSpec
from .latency import _check_int, _measuring, _time_interleaved, steady_malloc as _steady_malloc
from .slim import SlimBlock, SlimViT

__all__ = ["profile", "save_table", "load_table", "default_v_dims", "default_neurons", "default_tokens",
           "additive_dense_ms",
           "table_summary", "profile_main", "build_profile_parser", "run_profile", "spec_and_config", "TABLE_FORMAT",
           "DTYPES", "CONFIG_KEYS"]

TABLE_FORMAT = LATENCY_FORMAT
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# `SlimViT`'s keyword configuration a table may be measured with (``fused_attn`` is ``sdpa``).
CONFIG_KEYS = ("qkv_bias", "proj_bias", "norm_eps", "init_values", "act", "no_embed_class", "class_token")
_BLOCK_KEYS = ("qkv_bias", "proj_bias", "norm_eps", "init_values", "act")
_TABLE_KEYS = ("format", "spec", "device", "batch_size", "heads", "v_dims", "neurons", "tokens", "attention_ms",
               "attention_spread_ms", "mlp_ms", "mlp_spread_ms", "drop_ms", "drop_spread_ms", "fixed_ms",
               "fixed_spread_ms", "dense_ms",
               "dense_spread_ms", "repeats", "warmup", "created")


def _default_grid(dense: int, step: int) -> list[int]:
    return sorted({1, dense, *range(step, dense + 1, step)})


def default_v_dims(spec: ViTSpec) -> list[int]:
    """1, the multiples of s_v up to ``v_head_dim``, and ``v_head_dim``; s_v = 8 for heads at
    least 32 wide, else ``v_head_dim // 4`` (at least 1)."""
    v = spec.v_head_dim
    return _default_grid(v, 8 if v >= 32 else max(1, v // 4))


def default_neurons(spec: ViTSpec) -> list[int]:
    """1, the multiples of s_m up to ``mlp_hidden``, and ``mlp_hidden``; s_m = 32 for MLPs at
    least 512 wide, else 8."""
    m = spec.mlp_hidden
    return _default_grid(m, 32 if m >= 512 else 8)


def default_tokens(spec: ViTSpec) -> list[int]:
    """The token counts a token-pruned plan may have, on a grid of 5: prefix + 2 (the fewest a
    block keeps: the prefix, one patch and the fused token), about a quarter, half and three
    quarters of the tokens, and all ``num_tokens``."""
    n, low = spec.num_tokens, min(spec.prefix_tokens + 2, spec.num_tokens)
    return sorted({low, n, *(max(low, round(n * f)) for f in (0.25, 0.5, 0.75))})


def _check_tokens(values, spec: ViTSpec) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"profile: tokens must be a list of ints, got {type(values).__name__}")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ValueError(f"profile: tokens must hold ints, got {list(values)!r:.200}")
    grid = [int(v) for v in values]
    if not grid or grid[0] < 1 or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"profile: tokens must be strictly increasing counts >= 1, got {grid}")
    if grid[-1] != spec.num_tokens:
        raise ValueError(f"profile: tokens must end at {spec.num_tokens} (the spec's num_tokens), got {grid}")
    return grid


def _check_grid(values, name: str, dense: int, what: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"profile: {name} must be a list of ints, got {type(values).__name__}")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ValueError(f"profile: {name} must hold ints, got {list(values)!r:.200}")
    grid = [int(v) for v in values]
    if not grid or grid[0] != 1:
        raise ValueError(f"profile: {name} must start at 1 (the narrowest width), got {grid}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"profile: {name} must be strictly increasing, got {grid}")
    if grid[-1] != dense:
        raise ValueError(f"profile: {name} must end at {dense} (the spec's {what}), got {grid}")
    return grid


def _resolve_device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"profile: device must be 'cpu', 'cuda' or a torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"profile: unknown device {device!r}; expected 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"profile: unknown device {device!r}; expected 'cpu' or 'cuda' (or 'cuda:N')")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"profile: device {device!r} asked, but torch sees no CUDA device here "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"profile: device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
    return dev


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    names = {v: k for k, v in DTYPES.items()}
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if dtype not in names:
        raise ValueError(f"profile: dtype must be one of {list(DTYPES)} (or the torch dtype), got {dtype!r}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("profile: float16 on the CPU is refused: CPU half-precision latency is not what users "
                         "deploy; use float32 or bfloat16 there, float16 on cuda")
    return dtype


def spec_and_config(spec_or_model, config: dict | None = None) -> tuple[ViTSpec, dict]:
    """The spec and `SlimViT` keyword configuration (``CONFIG_KEYS``) of a `ViTSpec` (`SlimViT`'s
    defaults), a `SlimViT` or a timm ViT, with ``config`` overriding; what `profile` measures."""
    if isinstance(spec_or_model, ViTSpec):
        spec, found = spec_or_model, {}
    elif isinstance(spec_or_model, SlimViT):
        spec = spec_or_model.spec
        found = {k: v for k, v in spec_or_model.config.items() if k in CONFIG_KEYS}
    elif isinstance(spec_or_model, nn.Module):
        from .introspect import model_config, spec_from_model
        spec, found = spec_from_model(spec_or_model), model_config(spec_or_model)
    else:
        raise TypeError(f"profile: expected a ViTSpec, a timm ViT or a SlimViT, got {type(spec_or_model).__name__}")
    if config is not None:
        if not isinstance(config, dict):
            raise TypeError(f"profile: config must be a dict of SlimViT keywords, got {type(config).__name__}")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            hint = " (attention's path is the sdpa argument)" if "fused_attn" in unknown else ""
            raise ValueError(f"profile: config has unknown keys {unknown}{hint}; known: {list(CONFIG_KEYS)}")
        found = {**found, **config}
    return spec, found


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _stats(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and half the inter-quartile range of each row (ms)."""
    q25, median, q75 = np.percentile(times, [25, 50, 75], axis=-1)
    return median, (q75 - q25) / 2


def profile(spec_or_model: ViTSpec | nn.Module, *, device: str | torch.device = "cpu", batch_size: int = 1,
            dtype: torch.dtype | str = torch.float32, threads: int | None = None, v_dims: Sequence[int] | None = None,
            neurons: Sequence[int] | None = None, tokens: Sequence[int] | None = None, repeats: int = 30,
            warmup: int = 5, sdpa: bool = True, progress: bool = True, config: dict | None = None,
            steady_malloc: bool = True) -> dict:
    """The latency table of ``spec_or_model`` (a `ViTSpec`, a timm ViT or a `SlimViT`: its
    spec, and its configuration unless ``config`` overrides it) on ``device`` at ``batch_size``
    and ``dtype``; see the module doc for what is timed and the table's keys.

    ``threads``: CPU threads while measuring (torch's thread count is restored afterwards;
    the table records the count used). ``v_dims`` / ``neurons``: the value-width and MLP-width
    grids, strictly increasing from 1 to the dense width (default `default_v_dims`,
    `default_neurons`). ``tokens``: the token counts to time every part at, strictly increasing
    and ending at ``spec.num_tokens`` (`default_tokens` for plans that prune tokens; default
    ``[num_tokens]`` only: every token kept; each point multiplies the passes' length). ``repeats`` (at least 3) timed passes over all grid points after
    ``warmup`` untimed ones. ``sdpa``: attention through SDPA (``fused_attn``) or the explicit
    matmul-softmax-matmul path. ``config``: `SlimViT` keywords (``qkv_bias``, ``act``,
    ``norm_eps``, ...; from a timm model `uvc.torch.introspect.model_config` gives them).
    ``steady_malloc``: keep freed memory in the process while timing
    (`uvc.torch.latency.steady_malloc`; the table records ``device["malloc"]``, and
    ``dense_page_faults``, the dense pass's median minor page faults).
    Arguments are checked before anything is measured (ValueError / TypeError).
    """
    spec, config = spec_and_config(spec_or_model, config)
    dev = _resolve_device(device)
    batch_size = _check_int(batch_size, "batch_size", "profile", 1)
    dtype = _resolve_dtype(dtype, dev)
    repeats = _check_int(repeats, "repeats", "profile", 3)
    warmup = _check_int(warmup, "warmup", "profile", 0)
    if threads is not None:
        threads = _check_int(threads, "threads", "profile", 1)
    if not isinstance(sdpa, (bool, np.bool_)):
        raise TypeError(f"profile: sdpa must be a bool, got {type(sdpa).__name__}")
    sdpa = bool(sdpa)
    if not isinstance(steady_malloc, (bool, np.bool_)):
        raise TypeError(f"profile: steady_malloc must be a bool, got {type(steady_malloc).__name__}")
    v_dims = _check_grid(default_v_dims(spec) if v_dims is None else v_dims, "v_dims", spec.v_head_dim, "v_head_dim")
    neurons = _check_grid(default_neurons(spec) if neurons is None else neurons, "neurons", spec.mlp_hidden,
                          "mlp_hidden")
    tokens = [spec.num_tokens] if tokens is None else _check_tokens(tokens, spec)
    heads = list(range(1, spec.num_heads + 1))

    dd = dict(device=dev, dtype=dtype)
    skip = LayerPlan(heads=(), v_index=(), neurons=(), tokens=spec.num_tokens, attn=False, mlp=False)
    # Building these checks config's values (act, ...) before any timing starts.
    fixed = SlimViT(spec, ArchPlan(spec, (skip,) * spec.depth), **config, fused_attn=sdpa, **dd)
    dense = SlimViT(spec, ArchPlan.dense(spec), **config, fused_attn=sdpa, **dd)
    block = functools.partial(SlimBlock, spec.embed_dim, qk_dim=spec.qk_head_dim, gated_mlp=spec.gated_mlp,
                              qk_norm=spec.qk_norm, fused_attn=sdpa,
                              **{k: config[k] for k in _BLOCK_KEYS if k in config}, **dd)
    attention = [block(num_heads=h, v_dim=v, mlp_hidden=0) for h in heads for v in v_dims]
    mlp = [block(num_heads=0, v_dim=0, mlp_hidden=n) for n in neurons]
    # A dropping block at each token count that leaves something to drop (prefix + 3 or more);
    # none with one token point, where no plan that drops is priced.
    floor = spec.prefix_tokens + 2
    drops = {k: block(num_heads=spec.num_heads, v_dim=spec.v_head_dim, mlp_hidden=0, tokens_out=max(floor, n // 2),
                      prefix_tokens=spec.prefix_tokens, class_token=spec.class_token)
             for k, n in enumerate(tokens) if n > floor and len(tokens) > 1}
    # Parts timed alone and chained in a model differ by a fraction that depends on the token
    # count; the dense blocks chained give that fraction at each count.
    chain = (nn.Sequential(*(block(num_heads=spec.num_heads, v_dim=spec.v_head_dim, mlp_hidden=spec.mlp_hidden)
                             for _ in range(spec.depth))) if len(tokens) > 1 else None)

    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((batch_size, spec.num_tokens, spec.embed_dim), generator=gen, device=dev).to(dtype)
    inputs = [x[:, :n].contiguous() for n in tokens]
    images = torch.randn((batch_size, spec.in_channels, *spec.image_size), generator=gen, device=dev).to(dtype)
    chains = [] if chain is None else [functools.partial(chain, t) for t in inputs]
    modules = attention + mlp + list(drops.values()) + ([] if chain is None else [chain]) + [fixed, dense]
    calls = ([functools.partial(m, t) for m in attention for t in inputs]
             + [functools.partial(m, t) for m in mlp for t in inputs]
             + [functools.partial(m, inputs[k]) for k, m in drops.items()]
             + chains + [functools.partial(fixed, images), functools.partial(dense, images)])
    from tqdm.auto import tqdm
    with tqdm(total=warmup + repeats, desc=f"profile {len(calls)} parts", unit="pass", disable=not progress,
              leave=False) as bar, _measuring(modules, threads, bool(steady_malloc)):
        used_threads = torch.get_num_threads()
        faults = np.zeros((len(calls), repeats))
        times = _time_interleaved(calls, warmup=warmup, repeats=repeats, device=dev, on_pass=bar.update,
                                  faults=faults)
    median, spread = _stats(times)
    nt = len(tokens)
    na, nm = len(attention) * nt, len(mlp) * nt
    att_shape, mlp_shape = (len(heads), len(v_dims), nt), (len(neurons), nt)
    dense_attention = median[:na].reshape(att_shape)[-1, -1]
    drop, drop_spread = np.zeros(nt), np.zeros(nt)
    for i, k in enumerate(drops):
        # The difference of two medians can fall below 0 within the noise: no time is negative.
        drop[k] = max(0.0, float(median[na + nm + i] - dense_attention[k]))
        drop_spread[k] = spread[na + nm + i]
    nd, nc = len(drops), len(chains)
    chained = ({} if chain is None else {"chain_ms": median[na + nm + nd:na + nm + nd + nc].tolist(),
                                         "chain_spread_ms": spread[na + nm + nd:na + nm + nd + nc].tolist()})
    return {"format": TABLE_FORMAT, "spec": spec.to_dict(),
            "device": {"type": dev.type, "name": _device_name(dev), "torch": torch.__version__,
                       "threads": int(used_threads), "dtype": next(k for k, v in DTYPES.items() if v == dtype),
                       "sdpa": sdpa, "malloc": "steady" if steady_malloc and _steady_malloc() else "default"},
            "batch_size": batch_size, "heads": heads, "v_dims": v_dims, "neurons": neurons, "tokens": tokens,
            "attention_ms": median[:na].reshape(att_shape).tolist(),
            "attention_spread_ms": spread[:na].reshape(att_shape).tolist(),
            "mlp_ms": median[na:na + nm].reshape(mlp_shape).tolist(),
            "mlp_spread_ms": spread[na:na + nm].reshape(mlp_shape).tolist(),
            "drop_ms": drop.tolist(), "drop_spread_ms": drop_spread.tolist(),
            "fixed_ms": float(median[-2]), "fixed_spread_ms": float(spread[-2]),
            "dense_ms": float(median[-1]), "dense_spread_ms": float(spread[-1]), **chained,
            "dense_page_faults": float(np.median(faults[-1])),
            "repeats": repeats, "warmup": warmup,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def additive_dense_ms(table: dict) -> float:
    """The table's price of the dense plan: ``fixed_ms`` + depth × (MHSA at all heads and the
    full value width + MLP at the full width). Close to ``dense_ms`` when the parts add up."""
    return LatencyTable({k: v for k, v in table.items() if k != "dense_ms"}).predict()


def save_table(table: dict, path: str | os.PathLike) -> None:
    """Writes a table from `profile` as JSON (atomically: a crash never leaves half a file)."""
    _check_table(table, "given to save_table")
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)


def load_table(path: str | os.PathLike) -> dict:
    """Reads a table written by `save_table`. Raises FileNotFoundError, or ValueError naming
    the file when it is not JSON, of another format or version, or incomplete."""
    table = read_json(path, f"latency table {os.fspath(path)}")
    _check_table(table, os.fspath(path))
    return table


def _check_table(table, source: str) -> None:
    """The checks `uvc.LatencyTable` makes (format, keys, grids, times) and the profiler's own
    keys; errors start with "latency table ``source``"."""
    LatencyTable(table, source=source)
    missing = [k for k in _TABLE_KEYS if k not in table]
    if missing:
        raise ValueError(f"latency table {source}: lacks keys {missing}")


def build_profile_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of ``uvc profile`` (added to ``parser``, or to a new one)."""
    p = parser or argparse.ArgumentParser(prog="uvc profile", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="'demo', a timm model name (built offline) or a folder written by uvc: its spec "
                                 "is what is profiled")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads while measuring (default: torch's)")
    p.add_argument("--v-dims", dest="v_dims", type=int, nargs="+",
                   help="value widths per head to time, 1 ... v_head_dim (default: steps of 8, or v_head_dim/4)")
    p.add_argument("--neurons", type=int, nargs="+",
                   help="MLP widths to time, 1 ... mlp_hidden (default: steps of 32, or 8 below 512)")
    p.add_argument("--tokens", type=int, nargs="*",
                   help="token counts to time every part at, ending at the model's tokens, for plans that prune "
                        "tokens; alone: prefix + 2, 1/4, 1/2, 3/4 and all of them (default: all tokens only)")
    p.add_argument("--repeats", type=int, default=30, help="timed passes over all parts (at least 3)")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes first")
    p.add_argument("--no-sdpa", dest="sdpa", action="store_false", help="time explicit attention instead of SDPA")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="latency.json", help="where the table goes (default: latency.json)")
    return p


def run_profile(args: argparse.Namespace) -> int:
    """``uvc profile`` on parsed arguments: profiles, writes ``args.out``, prints a summary."""
    from .pipeline import load_model
    model, _ = load_model(args.model)
    table = profile(model, device=args.device, batch_size=args.batch_size, dtype=args.dtype, threads=args.threads,
                    v_dims=args.v_dims, neurons=args.neurons,
                    tokens=None if args.tokens is None else args.tokens or default_tokens(spec_and_config(model)[0]),
                    repeats=args.repeats, warmup=args.warmup,
                    sdpa=args.sdpa, progress=not args.quiet)
    save_table(table, args.out)
    print(table_summary(table))
    print("wrote", args.out)
    return 0


def table_summary(table: dict) -> str:
    """A few lines: where and what was measured, grid sizes, and how additive the table is."""
    d, spec = table["device"], table["spec"]
    estimate, dense = additive_dense_ms(table), table["dense_ms"]
    return "\n".join([
        f"{spec.get('name') or 'model'} on {d['type']} ({d['name']}), {d['dtype']}, batch {table['batch_size']}, "
        f"{d['threads']} threads, {'SDPA' if d['sdpa'] else 'explicit attention'}, {table['repeats']} repeats",
        f"grid: {len(table['heads'])} heads x {len(table['v_dims'])} v dims x {len(table['tokens'])} token counts = "
        f"{len(table['heads']) * len(table['v_dims']) * len(table['tokens'])} MHSA points, "
        f"{len(table['neurons']) * len(table['tokens'])} MLP points (tokens {table['tokens']})",
        f"dense   {dense:9.3f} ms (± {table['dense_spread_ms']:.3f})",
        f"fixed   {table['fixed_ms']:9.3f} ms (± {table['fixed_spread_ms']:.3f})",
        f"fixed + {spec['depth']} x (MHSA + MLP) at the dense plan {estimate:.3f} ms = {estimate / dense:.3f} x "
        "the measured dense ms (1.0: the parts add up exactly)"])


def profile_main(argv: Sequence[str] | None = None) -> int:
    """``uvc profile MODEL --device cpu|cuda --batch-size N ... --out latency.json``; returns the
    exit status (2 with a one-line message on a bad argument or model)."""
    args = build_profile_parser().parse_args(argv)
    try:
        return run_profile(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"uvc profile: error: {e}", file=sys.stderr)
        return 2


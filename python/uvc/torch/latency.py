"""Wall-clock latency of a forward pass, for one model or several measured side by side.

    measure_latency(model, (3, 224, 224), batch_sizes=(1, 64))
    -> {1: {"median_ms": 4.1, "p10_ms": 4.0, "p90_ms": 4.4, "images_per_s": 243.9}, 64: {...}}

Times are per forward pass of one batch, in ms, under ``torch.inference_mode`` with the
model in eval mode; on CUDA the device is synchronised before and after every pass.

Memory: with glibc's default settings, a process hands large freed blocks back to the OS and
faults the pages in again on the next pass. At batch 64 that is 7 800 to 9 400 page faults and a
quarter to a third of the demo model's time, and how much depends on what the process allocated
before (the same model measured 28 or 41 ms). Timing therefore calls `steady_malloc` first (unless
``steady_malloc=False``): freed memory stays in the process, as with jemalloc or tcmalloc.
Each result reports ``page_faults``, the median minor page faults per pass.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import numbers
import time
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

try:
    import resource
except ImportError:  # not on Windows: page faults are not counted there
    resource = None

__all__ = ["measure_latency", "compare_latency", "steady_malloc"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_steady = None


def steady_malloc() -> bool:
    """Keeps freed memory in this process (glibc only), so that repeated forward passes do not
    page-fault their activations in again. Returns True when glibc took the settings (from then
    on, for the rest of the process: glibc cannot read its old settings back), False where the
    C library is not glibc.

    Sets glibc's trim threshold to its maximum and turns ``mmap`` off for large blocks
    (``mallopt``): freed blocks are reused instead of returned to the OS. The cost is a
    resident size that stays at its peak. To run a deployed model as fast as it was measured,
    call this at start-up or set, before Python starts,
    ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=2147483647:glibc.malloc.mmap_max=0``.
    """
    global _steady
    if _steady is None:
        try:
            libc = ctypes.CDLL(None)
        except (OSError, TypeError):  # no C library loaded under that name (Windows)
            libc = None
        # gnu_get_libc_version exists in glibc only; mallopt returns 1 on success.
        _steady = (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")
                   and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0)))
    return _steady


def _check_int(value, name: str, fn: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_shape(input_shape, fn: str) -> tuple[int, int, int]:
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"{fn}: input_shape must be a tuple (C, H, W), got {type(input_shape).__name__}")
    if len(input_shape) != 3:
        raise ValueError(f"{fn}: input_shape must have 3 entries (C, H, W) without the batch, got {tuple(input_shape)}")
    return tuple(_check_int(v, f"input_shape[{i}]", fn, 1) for i, v in enumerate(input_shape))


def _check_batch_sizes(batch_sizes, fn: str) -> tuple[int, ...]:
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
        raise TypeError(f"{fn}: batch_sizes must be a sequence of ints, got {type(batch_sizes).__name__}")
    if not batch_sizes:
        raise ValueError(f"{fn}: batch_sizes is empty")
    sizes = tuple(_check_int(b, f"batch_sizes[{i}]", fn, 1) for i, b in enumerate(batch_sizes))
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"{fn}: batch_sizes has duplicates: {list(sizes)}")
    return sizes


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _measuring(modules: Sequence[nn.Module], threads: int | None, steady: bool = True) -> Iterator[None]:
    """Eval mode, ``threads`` CPU threads (if given), `steady_malloc` (if ``steady``) and
    ``torch.inference_mode`` inside; every submodule's training flag and torch's thread count
    restored on the way out."""
    if steady:
        steady_malloc()
    # Every submodule's own flag, so a partly frozen model comes back exactly as it was.
    flags = [(m, m.training) for module in modules for m in module.modules()]
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for module in modules:
            module.eval()
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old_threads)
        for m, was_training in flags:
            m.training = was_training


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def _time_interleaved(calls: Sequence[Callable[[], object]], *, warmup: int, repeats: int, device: torch.device,
                      on_pass: Callable[[], object] | None = None, faults: np.ndarray | None = None) -> np.ndarray:
    """ms of each call in each repeat, shape (len(calls), repeats): ``warmup`` untimed passes
    over all calls, then ``repeats`` timed passes, each running every call once in order
    (A, B, A, B, ...) so drifts in machine load hit every call alike. On CUDA the device is
    synchronised before and after every call. ``on_pass`` runs after every pass (a progress bar).
    ``faults``: an array of the same shape that receives each call's minor page faults."""
    times = np.empty((len(calls), repeats))
    for _ in range(warmup):
        for call in calls:
            call()
        _sync(device)
        if on_pass is not None:
            on_pass()
    for r in range(repeats):
        for i, call in enumerate(calls):
            _sync(device)
            before = _minor_faults() if faults is not None else 0
            start = time.perf_counter()
            call()
            _sync(device)
            times[i, r] = (time.perf_counter() - start) * 1e3
            if faults is not None:
                faults[i, r] = _minor_faults() - before
        if on_pass is not None:
            on_pass()
    return times


def _measure(models: Mapping[str, nn.Module], input_shape, batch_sizes, warmup, repeats, threads, device,
             steady: bool, fn: str) -> dict[str, dict[int, dict]]:
    shape = _check_shape(input_shape, fn)
    sizes = _check_batch_sizes(batch_sizes, fn)
    warmup = _check_int(warmup, "warmup", fn, 0)
    repeats = _check_int(repeats, "repeats", fn, 1)
    if threads is not None:
        threads = _check_int(threads, "threads", fn, 1)
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"{fn}: device must be a str, torch.device or None, got {type(device).__name__}")
    if not isinstance(steady, (bool, np.bool_)):
        raise TypeError(f"{fn}: steady_malloc must be a bool, got {type(steady).__name__}")
    names = list(models)
    devices = {name: _model_device(models[name]) for name in names}
    if device is None:
        found = {d for d in devices.values() if d is not None}
        if len(found) > 1:
            raise ValueError(f"{fn}: the models live on different devices {sorted(map(str, found))}")
        device = found.pop() if found else torch.device("cpu")
    else:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    for name, d in devices.items():
        # The model is never moved: moving it would change the caller's object.
        if d is not None and d != device:
            raise ValueError(f"{fn}: device is {device} but model {name!r} lives on {d}; move the model first")

    gen = torch.Generator(device=device).manual_seed(0)
    times, faults = {}, {}
    with _measuring([models[name] for name in names], threads, bool(steady)):
        for b in sizes:
            base = torch.randn((b, *shape), generator=gen, device=device)
            calls = [functools.partial(models[name], base.to(_model_dtype(models[name]))) for name in names]
            counted = np.zeros((len(calls), repeats))
            timed = _time_interleaved(calls, warmup=warmup, repeats=repeats, device=device, faults=counted)
            for name, row, fault_row in zip(names, timed, counted):
                times.setdefault(name, {})[b] = row
                faults.setdefault(name, {})[b] = fault_row

    result = {}
    for name in names:
        result[name] = {}
        for b in sizes:
            p10, median, p90 = np.percentile(times[name][b], [10, 50, 90])
            result[name][b] = {"median_ms": float(median), "p10_ms": float(p10), "p90_ms": float(p90),
                               "images_per_s": float(b * 1e3 / median),
                               "page_faults": float(np.median(faults[name][b]))}
    return result


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], batch_sizes: Sequence[int] = (1, 64), *,
                    warmup: int = 3, repeats: int = 10, threads: int | None = None,
                    device: str | torch.device | None = None, steady_malloc: bool = True) -> dict[int, dict]:
    """Latency of ``model`` on random inputs of shape (batch, *input_shape).

    ``input_shape``: (C, H, W). ``warmup``: untimed passes per batch size; ``repeats``: timed
    passes. ``threads``: CPU threads to use while measuring (``torch.get_num_threads()`` is
    restored afterwards). ``device``: where inputs go (default: the model's device); the
    model must already live there. The model runs in eval mode and its (and every
    submodule's) training flag is restored afterwards. ``steady_malloc``: call
    `steady_malloc` first (module doc), so passes do not page-fault their memory in again.

    Returns ``{batch_size: {"median_ms", "p10_ms", "p90_ms", "images_per_s", "page_faults"}}``:
    median and 10th / 90th percentile of the ms per forward pass, images/s at the median, and
    the median minor page faults per pass (0 where not counted: not on Windows).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"measure_latency: model must be a torch.nn.Module, got {type(model).__name__}")
    return _measure({"model": model}, input_shape, batch_sizes, warmup, repeats, threads, device, steady_malloc,
                    "measure_latency")["model"]


def compare_latency(models: Mapping[str, nn.Module], input_shape: tuple[int, int, int],
                    batch_sizes: Sequence[int] = (1, 64), *, warmup: int = 3, repeats: int = 10,
                    threads: int | None = None, device: str | torch.device | None = None,
                    steady_malloc: bool = True) -> dict[str, dict[int, dict]]:
    """Latency of several models measured interleaved (A, B, A, B, ... per repeat), so that
    machine noise hits them alike; arguments as in `measure_latency`.

    Returns ``{name: {batch_size: {...}}}`` with `measure_latency`'s keys plus ``"ratio"``:
    this model's median ms divided by the first model's (1.0 for the first).
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"compare_latency: models must be a dict of name -> torch.nn.Module, got {type(models).__name__}")
    if not models:
        raise ValueError("compare_latency: models is empty")
    for name, m in models.items():
        if not isinstance(name, str):
            raise TypeError(f"compare_latency: models keys must be str, got {type(name).__name__}")
        if not isinstance(m, nn.Module):
            raise TypeError(f"compare_latency: models[{name!r}] must be a torch.nn.Module, got {type(m).__name__}")
    result = _measure(models, input_shape, batch_sizes, warmup, repeats, threads, device, steady_malloc,
                      "compare_latency")
    first = result[next(iter(models))]
    for per_batch in result.values():
        for b, stats in per_batch.items():
            stats["ratio"] = stats["median_ms"] / first[b]["median_ms"]
    return result

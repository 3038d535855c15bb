"""Latency in milliseconds, priced by the Swift core from a measured table.

A table (written by `uvc.torch.profile.profile` or ``uvc profile``) holds, for one model
shape on one device at one batch size, the median latency of every part a plan can change:
the MHSA part of a block at each kept head count × value width per head × tokens in on a
grid, the extra time of a block that drops tokens at each token count, the MLP part at each
width × token count on a grid, and the fixed part (patch embedding, norms, pooling, head).
The core prices a plan as

    T(plan) = fixed_ms + Σ_l [ MHSA runs · (A(h_l, v_l, n_l) + drops · D(n_l)) + MLP runs · M(m_l, n_{l+1}) ]   (ms)

with A, M and D multilinear between grid points (n_l: tokens entering block l; the MLP runs on
the tokens the block keeps), all scaled by one factor so that the dense plan prices at the
dense model's measured latency (``dense_ms``, when the table has it): a part timed alone pays
the call overhead that consecutive parts inside the model partly share, so the raw sum
overestimates every plan by about the same fraction (28 % for the demo model at batch 1 on this
CPU). That fraction depends on the token count (1.00 to 1.16 across the demo's five counts here), so
a table with a token axis and ``chain_ms`` (``depth`` dense blocks chained, timed at each token
count) first scales each token column k of A, M and D by chain_ms[k] / (depth · (A + M) of a
dense block at tokens[k]): every token count prices the dense blocks as they ran chained. The
same formula over expected counts and gate probabilities is the relaxed latency the solver's
budget uses, with its exact gradient (`LatencyTable.expected`). Every width grid runs
from 1 to the dense width, so no plan needs a width the table lacks; the token grid ends at the
model's tokens, and a plan below its first point is refused. A table profiled without
``--tokens`` has the one token point ``spec.num_tokens``: it prices plans that keep every token.
Format ``uvc.latency/4``. Tables of format 1 (no token axis) load as such a table; tables of
formats 1 and 2 timed with SDPA load with a warning: they timed a value width below the
query/key width outside SDPA's fused kernel, before `SlimAttention` padded it, and over-price it.
CPU tables of formats 1 to 3 at a batch size above 1 load with a warning too: they were timed
while glibc handed freed memory back to the OS between passes, so their parts paid page faults
whose share depended on the process's history (`uvc.torch.latency.steady_malloc`).

    table = uvc.LatencyTable.load("latency.json")
    table.check(spec, batch_size=1, device="cpu")     # refuses a table made for something else
    table.predict(plan)                               # ms
    uvc.Solver(spec, budget=0.5, latency=table)       # budget: 0.5 of the dense latency
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._core import LAYOUTS, native
from ._files import read_json
from .cost import RELAXED_FIELDS

__all__ = ["LatencyTable", "FORMAT", "ARGUMENT_NAMES", "NO_TABLE"]

FORMAT = "uvc.latency/4"
# 1: no token axis (every part at spec.num_tokens); 1 and 2: narrow value widths timed unpadded.
_FORMATS = ("uvc.latency/1", "uvc.latency/2", "uvc.latency/3", FORMAT)
_KEYS = ("spec", "device", "batch_size", "heads", "v_dims", "neurons", "attention_ms", "mlp_ms", "fixed_ms")
_TOKEN_KEYS = ("tokens", "drop_ms")
# The order in which the core takes a table's arrays.
ARGUMENT_NAMES: tuple = tuple(LAYOUTS["latency_table"])
NO_TABLE = (None,) * len(ARGUMENT_NAMES)  # what the core takes for a MACs budget


class LatencyTable:
    """A measured latency table, checked whole by the core when it is made.

    Args:
        table: the dict `uvc.torch.profile.profile` returns (format ``"uvc.latency/4"``;
            ``"uvc.latency/2"`` and ``/3`` load, with a warning when timed with SDPA or on a
            CPU at a batch above 1 (module doc);
            ``"uvc.latency/1"`` too: no ``tokens`` / ``drop_ms``, attention_ms (heads, v_dims)
            and mlp_ms (neurons,) at every token).
        source: how errors name the table (a path, or "table").

    Raises ValueError naming the table and what is wrong: another format, a missing key, a
    grid that does not run from 1 to the dense width (the point that is missing), times that
    are not finite and positive (the grid point), arrays of the wrong size.
    """

    def __init__(self, table: dict, *, source: str = "table") -> None:
        from .spec import ViTSpec
        self.source = str(source)
        if not isinstance(table, dict) or table.get("format") not in _FORMATS:
            got = f"format {table.get('format')!r}" if isinstance(table, dict) else f"a {type(table).__name__}"
            raise ValueError(f"latency table {self.source}: expected format {FORMAT!r}, got {got}")
        tokens_axis = table["format"] != _FORMATS[0]
        missing = [k for k in _KEYS + (_TOKEN_KEYS if tokens_axis else ()) if k not in table]
        if missing:
            raise ValueError(f"latency table {self.source}: missing keys {missing}")
        self.table = table
        device = table["device"] if isinstance(table["device"], dict) else {}
        if table["format"] in _FORMATS[:2] and device.get("sdpa"):
            warnings.warn(f"latency table {self.source} ({table['format']}) timed SDPA attention before value "
                          f"widths below the query/key width were padded to its fused kernel: it over-prices "
                          f"those widths (2x at batch 64 on a CPU); profile again with `uvc profile`",
                          UserWarning, stacklevel=2)
        if table["format"] != FORMAT and device.get("type") == "cpu" and table.get("batch_size", 1) != 1:
            warnings.warn(f"latency table {self.source} ({table['format']}) was timed while freed memory went back "
                          f"to the OS between passes: its parts paid page faults (up to a third of the demo's time at "
                          f"batch 64) in a share that varied with the process's history; profile again with "
                          f"`uvc profile`", UserWarning, stacklevel=2)
        try:
            self.spec = ViTSpec.from_dict(table["spec"])
            arrays = {k: self._grid(k) for k in ("heads", "v_dims", "neurons")}
            attention = np.ascontiguousarray(table["attention_ms"], dtype=np.float64)
            mlp = np.ascontiguousarray(table["mlp_ms"], dtype=np.float64)
            if tokens_axis:
                arrays["tokens"] = self._grid("tokens")
                drop = np.ascontiguousarray(table["drop_ms"], dtype=np.float64)
            else:  # format 1: the one token point, no drops
                arrays["tokens"] = np.array([self.spec.num_tokens], dtype=np.int64)
                attention, mlp, drop = attention[..., None], mlp[..., None], np.zeros(1)
            fixed = float(table["fixed_ms"])
            self._raw = dict(arrays, attention_ms=attention, mlp_ms=mlp, drop_ms=drop, fixed_ms=fixed)
            self._arrays = tuple(self._raw[k] for k in ARGUMENT_NAMES)
            self.predict()  # the core checks the whole table here
            # Per token column: the dense blocks priced as they ran chained (module doc).
            self.token_scale = np.ones(len(arrays["tokens"]))
            if tokens_axis and table.get("chain_ms") is not None:
                chain = np.asarray(table["chain_ms"], dtype=np.float64)
                if chain.shape != self.token_scale.shape or not np.all(np.isfinite(chain) & (chain > 0)):
                    raise ValueError(f"chain_ms must hold one finite, positive time per tokens point "
                                     f"({len(self.token_scale)}), got {table['chain_ms']!r:.200}")
                self.token_scale = chain / (self.spec.depth * (attention[-1, -1] + mlp[-1]))
            self.scale = 1.0
            scaled = {k: self._raw[k] * self.token_scale for k in ("attention_ms", "mlp_ms", "drop_ms")}
            self._arrays = tuple(scaled.get(k, self._raw[k]) for k in ARGUMENT_NAMES)
            if table.get("dense_ms") is not None:
                measured = float(table["dense_ms"])
                if not (np.isfinite(measured) and measured > fixed):
                    raise ValueError(f"dense_ms must be finite and above fixed_ms ({fixed}), got {measured}")
                self.scale = (measured - fixed) / (self.predict() - fixed)
                scaled = {k: v * self.scale for k, v in scaled.items()}
                self._arrays = tuple(scaled.get(k, self._raw[k]) for k in ARGUMENT_NAMES)
            self.dense_ms = self.predict()
        except (TypeError, ValueError) as e:
            raise ValueError(f"latency table {self.source}: {e}") from None

    def _grid(self, key: str) -> np.ndarray:
        values = self.table[key]
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{key} must be a list of ints, got {values!r}")
        return np.asarray(values, dtype=np.int64)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """The table saved as JSON at ``path``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table {path}: no such file (make one with `uvc profile`)")
        return cls(read_json(path, f"latency table {path}"), source=str(path))

    @property
    def device(self) -> dict:
        """Where it was measured: type, name, torch version, threads, dtype, sdpa."""
        return dict(self.table["device"])

    @property
    def batch_size(self) -> int:
        return int(self.table["batch_size"])

    def check(self, spec=None, *, batch_size: int | None = None, device: str | None = None) -> "LatencyTable":
        """Raises ValueError naming the table and the mismatch unless it was made for ``spec``
        (the model shape), ``batch_size`` and ``device`` ("cpu", "cuda", ...) where given.
        Returns the table."""
        if spec is not None and spec.replace(name=None) != self.spec.replace(name=None):
            diff = [f"{f.name}: table {getattr(self.spec, f.name)!r}, model {getattr(spec, f.name)!r}"
                    for f in dataclasses.fields(spec) if f.name != "name"
                    and getattr(spec, f.name) != getattr(self.spec, f.name)]
            raise ValueError(f"latency table {self.source} was measured for another model shape ({'; '.join(diff)}); "
                             "profile this model with `uvc profile`")
        if batch_size is not None and int(batch_size) != self.batch_size:
            raise ValueError(f"latency table {self.source} was measured at batch size {self.batch_size}, not "
                             f"{batch_size}; profile at that batch size")
        if device is not None:
            kind = str(device).split(":")[0]
            if kind != self.device.get("type"):
                raise ValueError(f"latency table {self.source} was measured on {self.device.get('type')} "
                                 f"({self.device.get('name')}), not {device}; profile on that device")
        return self

    @property
    def tokens(self) -> list[int]:
        """The token counts the table was measured at (``[spec.num_tokens]`` without a token axis)."""
        return self._raw["tokens"].tolist()

    @property
    def dense_attention_ms(self) -> float:
        """The MHSA part of a dense block (all heads, full value width, every token), scaled, in ms."""
        return float(self._raw["attention_ms"][-1, -1, -1] * self.token_scale[-1] * self.scale)

    @property
    def native_args(self) -> tuple:
        """The table as the core takes it (`ARGUMENT_NAMES`: grids, then attention_ms (heads,
        v_dims, tokens), mlp_ms (neurons, tokens), drop_ms (tokens), fixed_ms), times scaled."""
        return self._arrays

    def predict(self, plan=None) -> float:
        """The table's latency of ``plan`` (the dense model when None), in ms per batch."""
        return float(self.breakdown(plan)[0])

    def breakdown(self, plan=None) -> tuple[float, np.ndarray]:
        """(total ms, (depth, 2) array of each block's MHSA and MLP ms); the rest is ``fixed_ms``."""
        from .plan import ArchPlan
        if plan is None:
            plan = ArchPlan.dense(self.spec)
        elif not isinstance(plan, ArchPlan):
            raise TypeError(f"LatencyTable.predict: plan must be an ArchPlan, got {type(plan).__name__}")
        elif plan.spec.replace(name=None) != self.spec.replace(name=None):
            raise ValueError(f"latency table {self.source}: the plan is for another model shape than the table")
        layers = np.empty((self.spec.depth, 2), dtype=np.float64)
        total = native.latency_exact(self.spec.encoded, *self._arrays, plan.counts, layers)
        return total, layers

    def expected(self, x: np.ndarray, out: np.ndarray | None = None) -> float:
        """Relaxed latency (ms) of ``x`` (float64 (len(RELAXED_FIELDS), depth), rows `uvc.cost.RELAXED_FIELDS`, token
        counts on the table's token grid) and its gradient into ``out`` (allocated when None)."""
        if out is None:
            out = np.empty((len(RELAXED_FIELDS), self.spec.depth), dtype=np.float64)
        return native.latency_expected(self.spec.encoded, *self._arrays, x, out)

    def to_dict(self) -> dict:
        return dict(self.table)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, LatencyTable) and self.table == other.table

    def __repr__(self) -> str:
        d = self.device
        return (f"LatencyTable({self.source}: {d.get('type')} {d.get('name')!r}, batch {self.batch_size}, "
                f"{d.get('dtype')}, dense {self.dense_ms:.3f} ms)")

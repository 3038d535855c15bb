"""A bounded smoke run of the mutation fuzzer in benchmarks/fuzz_native.py (loaded by path).

A few thousand inputs with a fixed seed, each run in a forked child that the harness watches:
no input may crash the process, hang, or raise anything but TypeError / ValueError; a call on
a native object that raises must leave its state (`save()` bytes) as it was and the object
usable; two threads on one object may only see RuntimeError (busy), two threads on two objects
nothing. Every function of `uvc._native`, every method of its two types and every function of
the numpy API must get inputs, and every unmutated seed call must succeed. A failure message
lists each failure signature with the input that shows it;
``python benchmarks/fuzz_native.py --seed SEED --replay INDEX`` reruns that input alone.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 20240517
INPUTS = 3000


def _load():
    name = "uvc_bench_fuzz_native"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "fuzz_native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fz():
    return _load()


@pytest.fixture(scope="module")
def result(fz):
    return fz.fuzz(SEED, INPUTS, hang_timeout=20.0, progress_s=None)


def _report(result, kinds) -> str:
    lines = []
    for sig, v in sorted(result.failures.items(), key=lambda kv: -kv[1]["count"]):
        if sig.split(" | ", 1)[0] not in kinds:
            continue
        f = v["examples"][0]
        lines.append(f"{v['count']:>5} x {sig}\n        e.g. --seed {SEED} --replay {f['index']}: {f['mutation'][:200]}"
                     f"\n        -> {f['detail'][:200]}")
    return "\n".join(lines)


def _native_surface() -> set[str]:
    """Public functions and types of `uvc._native`, and each type's methods as 'Type.method'."""
    import uvc._native as native
    names = {n for n in dir(native) if not n.startswith("_")}
    assert {"Solver", "GroupSampler"} <= names
    out = set(names)
    for t in ("Solver", "GroupSampler"):
        out |= {f"{t}.{m}" for m in dir(getattr(native, t)) if not m.startswith("_")}
    return out


def test_every_function_gets_inputs_and_its_seed_calls_succeed(fz, result):
    covered = {n.split(".", 1)[1] for n in fz.TARGETS if n.startswith("native.")}
    assert _native_surface() == covered, \
        "the harness must cover every function of uvc._native and every method of its Solver and GroupSampler"
    assert set(fz.NATIVE_SIGS) == covered
    for name in fz.TARGETS:
        st = result.stats[name]
        assert st["inputs"] >= 5, f"{name}: {st}"
        assert st["seed_calls"] >= 2, f"{name}: {st}"
    assert result.totals["inputs"] == INPUTS
    assert result.totals["seed_failed"] == 0, _report(result, {"seed_failed"})


def test_bad_inputs_are_rejected_with_type_or_value_errors(fz, result):
    for name in fz.TARGETS:
        st = result.stats[name]
        if st["inputs"] >= 30 and not name.startswith("threads."):
            assert st["TypeError"] + st["ValueError"] > 0, f"{name}: mutations never rejected: {st}"
    assert result.totals["ok"] > 0


def test_failed_calls_leave_objects_unchanged_and_usable(result):
    assert result.totals["use_after"] == 0, _report(result, {"use_after"})


def test_two_threads_on_one_object_meet_busy_errors_only(result):
    shared, separate = result.stats["threads.shared"], result.stats["threads.separate"]
    assert shared["inputs"] >= 5 and separate["inputs"] >= 5
    # Each shared run makes 40-160 overlapping calls: some must have found the object busy, or
    # the runs did not overlap and tested nothing.
    assert shared["busy"] > 0, shared
    assert separate["busy"] == 0, separate
    assert shared["other"] == separate["other"] == 0, _report(result, {"other"})


def test_no_crashes_or_hangs(result):
    t = result.totals
    assert t["crash"] == 0 and t["hang"] == 0, _report(result, {"crash", "hang"})


def test_no_unexpected_exceptions(result):
    assert result.totals["other"] == 0, _report(result, {"other"})


def test_inputs_depend_only_on_seed_and_index(fz):
    corpus = fz.Corpus(SEED)
    for index in (0, 77, 500, 2999):
        a, b = fz.make_case(corpus, SEED, index), fz.make_case(fz.Corpus(SEED), SEED, index)
        assert (a.target, a.describe(), a.valid) == (b.target, b.describe(), b.valid)

"""The native boundary: the typed stub matches the extension, layouts come from the core, the
objects own their state (bytes, refused calls, two threads), and the numpy layer stays free
of torch."""
import ast
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import uvc
from uvc import _native, usdc
from uvc._core import LAYOUTS

STUB = Path(uvc.__file__).with_name("_native.pyi")
TINY = "deit_tiny_patch16_224"


def _stub_names():
    tree = ast.parse(STUB.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: {m.name for m in n.body if isinstance(m, ast.FunctionDef) and m.name != "__init__"}
               for n in tree.body if isinstance(n, ast.ClassDef)}
    return functions, classes


def test_the_stub_lists_exactly_what_the_extension_exports():
    functions, classes = _stub_names()
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert public == functions | set(classes)
    for name, methods in classes.items():
        assert {m for m in dir(getattr(_native, name)) if not m.startswith("_")} == methods, name
    assert Path(_native.__file__).name.endswith(".abi3.so"), "the wheel stays on the stable ABI"


def test_layouts_name_every_encoding_the_numpy_layer_reads():
    assert LAYOUTS["spec"][:3] == ["depth", "embed_dim", "num_heads"] and LAYOUTS["spec"][-1] == "class_token"
    spec = uvc.ViTSpec.from_name(TINY)
    values = dict(spec.to_dict(), image_height=224, image_width=224, pool=LAYOUTS["pools"].index("token"))
    assert spec.encoded.tolist() == [values[n] for n in LAYOUTS["spec"]]
    assert uvc.plan.PLAN_ROW == ("heads", "qk_dim", "v_dim", "neurons", "attn", "mlp", "tokens")
    assert uvc.cost.LAYER_COMPONENTS[-2:] == ("fuse", "qk_norm") and uvc.cost.RELAXED_FIELDS[:2] == ("heads", "qk_dim")
    assert usdc.GROUPINGS == ("halving", "sample", "batch", "mixed")
    config = {e["name"]: e for e in LAYOUTS["solver_config"]}
    assert config["lr_counts"]["count"] == 3 and config["gate_sampler"]["choices"] == ["gumbel", "sigmoid", "softl0"]
    assert sum(e["count"] for e in LAYOUTS["solver_config"]) == 33
    # The defaults are the core's: a solver built from them encodes them back unchanged.
    assert uvc.solver.DEFAULTS["gate_init"] == config["gate_init"]["default"][0]
    layout = json.loads(uvc.Solver(spec)._core.layout())
    assert [name for name, _ in layout["groups"]] == ["heads", "dims", "neurons"]
    assert [shape for _, shape in layout["groups"]] == [[12, 3], [12, 3, 64], [12, 768]]


def _scores(spec, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.random((spec.depth, spec.num_heads, spec.v_head_dim)) + 0.1
    return d.sum(-1), d, rng.random((spec.depth, spec.mlp_hidden)) + 0.1


def test_a_refused_call_leaves_the_object_usable_and_unchanged():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0)
    h, d, n = _scores(spec)
    for _ in range(5):
        solver.step(h, d, n, solver.sample_gates(1.0) * 0, lr=1e-3, epoch=1.0)
    core, before = solver._core, solver._core.save()
    bad_calls = [lambda: core.step(h, d, n.astype(np.float32), None, None, 1e-3, 1.0, *solver.masks()),
                 lambda: core.step(h, d, n, None, None, "lr", 1.0, *solver.masks()),
                 lambda: core.sample_gates(float("nan"), np.empty((spec.depth, 2))),
                 lambda: core.plan(0, np.empty((spec.depth, 6), np.int64), *solver.masks()),
                 lambda: core.load(before[:-1]),
                 lambda: core.masks(*solver.masks()[:2]),
                 lambda: core.summary(np.empty(3))]
    for bad in bad_calls:
        with pytest.raises((TypeError, ValueError)):
            bad()
        assert core.save() == before
    solver.step(h, d, n, None, lr=1e-3, epoch=1.0)
    assert solver.stats()["search_steps"] == 6


def test_one_object_is_used_by_one_thread_at_a_time():
    spec = uvc.ViTSpec.from_name("deit_base_patch16_224")
    shared = uvc.Solver(spec, 0.5, warmup_epochs=0.0)
    h, d, n = _scores(spec)
    outcomes, errors = [], []

    def work(solver):
        for _ in range(200):
            try:
                solver.step(h, d, n, None, lr=1e-4, epoch=1.0)
                outcomes.append("ok")
            except RuntimeError as e:
                assert "another thread" in str(e)
                outcomes.append("busy")
            except BaseException as e:  # noqa: BLE001 - any other outcome fails the test
                errors.append(e)

    threads = [threading.Thread(target=work, args=(shared,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert shared.stats()["search_steps"] == outcomes.count("ok")
    # Separate objects never contend.
    outcomes.clear()
    own = [uvc.Solver(spec, 0.5, warmup_epochs=0.0) for _ in range(2)]
    threads = [threading.Thread(target=work, args=(s,)) for s in own]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and outcomes.count("busy") == 0
    assert own[0].state_dict() == own[1].state_dict()


def test_state_dicts_of_the_old_format_are_refused_clearly():
    spec = uvc.ViTSpec.from_name(TINY)
    d = uvc.Solver(spec).state_dict()
    old = dict(d, format="uvc.solver/2", state={"z": [0.0]}, rng=[1, 2, 3, 4], last_scores=[])
    with pytest.raises(ValueError, match=r"format 'uvc.solver/2' \(saved by uvc 0.1"):
        uvc.Solver.from_state_dict(old)
    with pytest.raises(ValueError, match=r"format 'uvc.usdc_sampler/1' \(saved by uvc 0.1"):
        usdc.GroupSampler(0).load_state_dict({"format": "uvc.usdc_sampler/1", "words": [1, 2, 3, 4]})


def test_the_numpy_layer_does_not_import_torch():
    code = ("import sys, uvc, uvc.usdc; s = uvc.Solver(uvc.ViTSpec.from_name('deit_tiny_patch16_224')); s.plan(); "
            "uvc.usdc.GroupSampler(0).sample(4, 2); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_what_the_fuzzer_found_is_refused_up_front():
    """Regressions from benchmarks/fuzz_native.py: a loaded logit past the bound a step keeps
    (a later soft-L0 step overflowed to NaN and trapped), specs whose buffers do not fit in
    memory (the process aborted), an int hyper-parameter past float64, noise rows that are not
    the group count."""
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, gate_sampler="softl0")
    raw = bytearray(solver._core.save())
    logits_at = 24 + 8 * sum(v.size for k, v in solver.state_fields().items() if k in ("removal", "committed",
                                                                                          "duals", "z"))
    raw[logits_at:logits_at + 8] = np.array([1e300]).tobytes()
    with pytest.raises(ValueError, match=r"state.logits: entries must be finite with \|value\| <= 50"):
        solver._core.load(bytes(raw))
    with pytest.raises(ValueError, match="prunable groups"):
        uvc.Solver(spec.replace(num_heads=2**20, embed_dim=2**20))
    with pytest.raises(ValueError, match="gating_interval"):
        uvc.Solver(spec, gating_interval=10**400)
    core = usdc.GroupSampler(0)._core
    groups, sizes = np.empty(8, np.int64), np.empty(4, np.int64)
    with pytest.raises(ValueError, match="noise_out"):
        core.sample(0, groups, sizes, np.empty((8, 3)))

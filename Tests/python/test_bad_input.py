"""Bad input to the numpy API raises TypeError / ValueError naming the argument (regressions
found by benchmarks/fuzz_native.py: AttributeError, OverflowError, KeyError, IndexError,
ZeroDivisionError, MemoryError, decimal.InvalidOperation and a token-dropping random plan the
core rejects)."""
from __future__ import annotations

import decimal
import fractions

import numpy as np
import pytest

import uvc
from uvc import usdc

TINY = dict(depth=2, embed_dim=8, num_heads=2, mlp_hidden=16, patch_size=4, image_size=(8, 8))


def _spec(**kw):
    return uvc.ViTSpec(**dict(TINY, **kw))


def _state(**changes):
    d = uvc.Solver(_spec()).state_dict()
    for path, value in changes.items():
        *head, last = path.split(".")
        target = d
        for k in head:
            target = target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return d


def _load(**changes):
    uvc.Solver(_spec()).load_state_dict(_state(**changes))


def _plan_dict(**changes):
    d = uvc.ArchPlan.dense(_spec()).to_dict()
    for k, v in changes.items():
        if k == "layer0":
            del d["layers"][0][v]
        elif v is KeyError:
            del d[k]
        else:
            d[k] = v
    return d


CASES = [
    # 1. spec is not a ViTSpec
    ("expected_cost", lambda: uvc.expected_cost(None, np.zeros((6, 12))), TypeError, "expected_cost: spec"),
    ("relaxed_cost", lambda: uvc.relaxed_cost("deit", heads=1), TypeError, "relaxed_cost: spec"),
    ("relaxed_inputs", lambda: uvc.relaxed_inputs([]), TypeError, "relaxed_inputs: spec"),
    ("random_plan", lambda: uvc.random_plan([], np.random.default_rng(0)), TypeError, "random_plan: spec"),
    ("count", lambda: uvc.count(None), TypeError, "count: spec"),
    ("ArchPlan.dense", lambda: uvc.ArchPlan.dense(None), TypeError, "dense: spec"),
    # 2. huge ints / floats
    ("Solver budget", lambda: uvc.Solver(_spec(), 10**400), ValueError, "budget"),
    ("Solver tau", lambda: uvc.Solver(_spec(), tau=10**400), ValueError, "tau"),
    ("ViTSpec int64", lambda: _spec(in_channels=2**64), ValueError, "in_channels must fit in int64"),
    ("ViTSpec image int64", lambda: _spec(image_size=(2**64, 8)), ValueError, "image_size must fit in int64"),
    ("Convention layer_norm", lambda: uvc.Convention(layer_norm=10**400), ValueError, "layer_norm"),
    ("Solver.plan round_to", lambda: uvc.Solver(_spec()).plan(round_to=10**400), ValueError, "round_to"),
    ("load state not base64", lambda: _load(state="not base64!"), ValueError, "base64"),
    ("load state truncated", lambda: _load(state=_state()["state"][:-8]), ValueError, "state"),
    ("relaxed v_dim", lambda: uvc.relaxed_cost(_spec(), v_dim=10**400), ValueError, "v_dim"),
    ("usdc _real", lambda: usdc.group_gates(np.zeros((2, 1)), [0, 1], np.zeros((2, 1)), tau=10**400),
     ValueError, "tau"),
    ("count total overflow", lambda: uvc.count(_spec(), convention=uvc.Convention(layer_norm=1e308)),
     ValueError, "overflow"),
    # 3. missing keys, wrong containers
    ("load spec key", lambda: _load(spec=KeyError), ValueError, "'spec'"),
    ("load hyper key", lambda: _load(hyper=KeyError), ValueError, "'hyper'"),
    ("load budget key", lambda: _load(**{"hyper.budget": KeyError}), ValueError, "'budget'"),
    ("load state key", lambda: _load(state=KeyError), ValueError, "'state'"),
    ("from_state_dict key", lambda: uvc.Solver.from_state_dict(_state(convention=KeyError)),
     ValueError, "'convention'"),
    ("from_state_dict list state", lambda: uvc.Solver.from_state_dict(_state(state=[1, 2])), TypeError, "state"),
    ("load old format", lambda: _load(format="uvc.solver/2"), ValueError, "uvc 0.1"),
    ("ArchPlan spec key", lambda: uvc.ArchPlan.from_dict(_plan_dict(spec=KeyError)), ValueError, "'spec'"),
    ("ArchPlan layer key", lambda: uvc.ArchPlan.from_dict(_plan_dict(layer0="tokens")), ValueError, "'tokens'"),
    ("GroupSampler state key", lambda: usdc.GroupSampler(0).load_state_dict({"format": usdc.SAMPLER_FORMAT}),
     ValueError, "'state'"),
    # 4. ViTSpec fields used before the core checks them; huge depth
    ("ViTSpec image_size []", lambda: _spec(image_size=[]), ValueError, "image_size"),
    ("ViTSpec patch_size 0", lambda: _spec(patch_size=0), ValueError, "patch_size"),
    ("ViTSpec num_heads 0", lambda: _spec(num_heads=0), ValueError, "num_heads"),
    ("ViTSpec huge depth", lambda: _spec(depth=2**64 - 1), ValueError, "depth"),
    ("ViTSpec large depth", lambda: _spec(depth=2**40), ValueError, "depth"),
    # 5. absurd batch sizes and huge broadcast arrays
    ("group_sizes batch", lambda: usdc.group_sizes(2**31), ValueError, "batch"),
    ("sample batch", lambda: usdc.GroupSampler(0).sample(2**31, 2), ValueError, "batch"),
    ("sample columns", lambda: usdc.GroupSampler(0).sample(4, 2**31), ValueError, "columns"),
    ("noise count", lambda: usdc.GroupSampler(0).noise(2**40), ValueError, "count"),
    ("whole_batch", lambda: usdc.whole_batch(2**40, 1), ValueError, "batch"),
    ("_array broadcast", lambda: usdc.group_gates(np.broadcast_to(0.0, (1 << 30, 1 << 10)), [0], np.zeros((1, 1))),
     ValueError, "logits"),
    ("expected_cost broadcast x", lambda: uvc.expected_cost(_spec(), np.broadcast_to(0.0, (1 << 40,))),
     ValueError, "x"),
    # 6. NaN probabilities (a Decimal is no numbers.Real: TypeError, not decimal.InvalidOperation)
    ("random_plan drop_prob NaN", lambda: uvc.random_plan(_spec(), np.random.default_rng(0),
                                                          drop_prob=decimal.Decimal("NaN")), TypeError, "drop_prob"),
    ("random_plan drop_prob float NaN", lambda: uvc.random_plan(_spec(), np.random.default_rng(0),
                                                                drop_prob=float("nan")), ValueError, "drop_prob"),
    ("random_plan skip_prob NaN", lambda: uvc.random_plan(_spec(), np.random.default_rng(0), skip_prob=float("nan")),
     ValueError, "skip_prob"),
]


@pytest.mark.parametrize("call,exc,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_type_or_value_error(call, exc, needle):
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc
    assert needle in str(info.value), str(info.value)


# 7. a spec without prefix tokens: random plans never drop tokens (the core would reject it)
def test_random_plan_without_prefix_tokens_drops_to_one_patch_and_the_fused_token():
    # Without a class token the tokens are ranked by the attention they receive.
    spec = uvc.ViTSpec(depth=2, embed_dim=4, num_heads=1, mlp_hidden=4, patch_size=1, image_size=(2, 2),
                       prefix_tokens=0, pool="avg")
    for seed in range(20):
        plan = uvc.random_plan(spec, np.random.default_rng(seed), drop_prob=1.0, skip_prob=0.0)
        assert [l.tokens for l in plan.layers][0] == spec.num_tokens and 2 <= plan.layers[1].tokens < 4


def test_good_input_still_works():
    spec = _spec()
    assert uvc.ViTSpec.from_dict(spec.to_dict()) == spec
    assert _spec(image_size=[8, 8]).image_size == (8, 8)
    plan = uvc.random_plan(spec, np.random.default_rng(0), drop_prob=fractions.Fraction(1, 2))
    assert uvc.ArchPlan.from_dict(plan.to_dict()) == plan
    s = uvc.Solver(spec, np.float32(0.5), tau=fractions.Fraction(1, 2))
    s2 = uvc.Solver.from_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()
    g = usdc.GroupSampler(3)
    g.load_state_dict(g.state_dict())
    assert usdc.group_sizes(8).tolist() == [4, 2, 1, 1]
    assert uvc.count(spec, convention=uvc.Convention(layer_norm=5)).macs > 0

"""The latency table (`uvc.torch.profile`): its shape, its file format, the checks before
measuring, and a loose additivity bound. Timings come from a shared, noisy machine: nothing
here is timing-tight."""
import json
import math
import platform

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uvc.spec import ViTSpec  # noqa: E402
from uvc.torch.profile import (TABLE_FORMAT, additive_dense_ms, default_neurons, default_tokens,  # noqa: E402
                               default_v_dims, load_table, profile, profile_main, save_table)

# The demo model's shape, with random weights.
DEMO = ViTSpec(depth=6, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28, in_channels=1,
               num_classes=10)
V_DIMS, NEURONS = [1, 8, 16], [1, 128, 256]
FAST = dict(repeats=3, warmup=1, progress=False, v_dims=V_DIMS, neurons=NEURONS)
KEYS = {"format", "spec", "device", "batch_size", "heads", "v_dims", "neurons", "tokens", "attention_ms",
        "attention_spread_ms", "mlp_ms", "mlp_spread_ms", "drop_ms", "drop_spread_ms", "fixed_ms", "fixed_spread_ms", "dense_ms", "dense_spread_ms", "dense_page_faults", "repeats", "warmup",
        "created"}


@pytest.fixture(scope="module")
def table():
    return profile(DEMO, threads=1, batch_size=2, **FAST)


def test_table_shape_keys_and_positive_times(table):
    assert set(table) == KEYS
    assert table["format"] == TABLE_FORMAT and ViTSpec.from_dict(table["spec"]) == DEMO
    assert table["device"]["type"] == "cpu" and table["device"]["threads"] == 1
    assert table["device"]["dtype"] == "float32" and table["device"]["sdpa"] is True
    # glibc (Debian's, CI's) takes the settings; passes then fault nothing in.
    assert table["device"]["malloc"] == ("steady" if platform.libc_ver()[0] == "glibc" else "default")
    assert table["dense_page_faults"] == 0 or table["device"]["malloc"] == "default"
    assert table["device"]["name"] and table["device"]["torch"] == torch.__version__
    assert (table["batch_size"], table["repeats"], table["warmup"]) == (2, 3, 1)
    assert table["heads"] == [1, 2, 3, 4] and table["v_dims"] == V_DIMS and table["neurons"] == NEURONS
    assert table["tokens"] == [DEMO.num_tokens], "without tokens= every part runs on all tokens"
    assert np.shape(table["attention_ms"]) == np.shape(table["attention_spread_ms"]) == (4, 3, 1)
    assert np.shape(table["mlp_ms"]) == np.shape(table["mlp_spread_ms"]) == (3, 1)
    assert table["drop_ms"] == table["drop_spread_ms"] == [0.0], "no token count to drop from is timed"
    times = np.concatenate([np.ravel(table["attention_ms"]), np.ravel(table["mlp_ms"]),
                            [table["fixed_ms"], table["dense_ms"]]])
    assert np.all(np.isfinite(times)) and np.all(times > 0)
    spreads = np.concatenate([np.ravel(table["attention_spread_ms"]), np.ravel(table["mlp_spread_ms"]),
                              [table["fixed_spread_ms"], table["dense_spread_ms"]]])
    assert np.all(np.isfinite(spreads)) and np.all(spreads >= 0)
    assert table["created"].endswith("Z")


def test_parts_add_up_to_the_dense_model_loosely(table):
    estimate = additive_dense_ms(table)
    assert estimate == pytest.approx(table["fixed_ms"] + DEMO.depth * (table["attention_ms"][3][2][0]
                                                                       + table["mlp_ms"][2][0]))
    assert 0.5 <= estimate / table["dense_ms"] <= 2.0, (estimate, table["dense_ms"])


def test_threads_are_restored():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    t = profile(DEMO, threads=other, **FAST)
    assert t["device"]["threads"] == other and torch.get_num_threads() == before


def test_json_round_trip_and_format_refusal(table, tmp_path):
    path = tmp_path / "latency.json"
    save_table(table, path)
    assert load_table(path) == table
    for bad in ({**table, "format": "uvc.latency/5"}, {**table, "format": "uvc.plan/1"}, [1, 2]):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"{path}.*uvc.latency/4"):
            load_table(path)
    path.write_text(json.dumps({k: v for k, v in table.items() if k != "mlp_ms"}))
    with pytest.raises(ValueError, match=f"{path}.*mlp_ms"):
        load_table(path)
    path.write_text(json.dumps({**table, "mlp_ms": [1.0]}))
    with pytest.raises(ValueError, match="mlp_ms"):
        load_table(path)
    path.write_text("{\"format\": ")
    with pytest.raises(ValueError, match="not JSON"):
        load_table(path)


def test_default_grids():
    deit_s = ViTSpec.from_name("deit_small_patch16_224")
    assert default_v_dims(deit_s) == [1] + list(range(8, 65, 8))
    assert default_neurons(deit_s) == [1] + list(range(32, 1537, 32))
    assert default_v_dims(DEMO) == [1, 4, 8, 12, 16] and default_neurons(DEMO) == [1] + list(range(8, 257, 8))
    odd = DEMO.replace(v_head_dim=18, mlp_hidden=100)
    assert default_v_dims(odd) == [1, 4, 8, 12, 16, 18] and default_neurons(odd)[-2:] == [96, 100]
    assert default_v_dims(DEMO.replace(v_head_dim=1)) == [1]
    assert default_tokens(deit_s) == [3, 49, 98, 148, 197] and default_tokens(DEMO) == [3, 12, 25, 38, 50]
    assert default_tokens(DEMO.replace(prefix_tokens=0, class_token=False, pool="avg")) == [2, 12, 24, 37, 49]


def test_a_token_axis_times_every_part_at_every_token_count():
    import uvc
    spec = DEMO.replace(depth=2)
    t = profile(spec, tokens=[3, 4, 20, 50], **FAST)
    assert t["tokens"] == [3, 4, 20, 50]
    assert np.shape(t["attention_ms"]) == (4, 3, 4) and np.shape(t["mlp_ms"]) == (3, 4)
    assert t["drop_ms"][0] == 0.0, "3 tokens (prefix + 2) leave nothing to drop"
    assert all(math.isfinite(x) and x >= 0 for x in t["drop_ms"])
    assert all(x > 0 for x in np.ravel(t["attention_ms"]).tolist() + np.ravel(t["mlp_ms"]).tolist())
    # The dense blocks chained at each token count; the table scales each token column by them.
    assert len(t["chain_ms"]) == len(t["chain_spread_ms"]) == 4 and all(x > 0 for x in t["chain_ms"])
    table = uvc.LatencyTable(t)
    parts = 2 * (np.array(t["attention_ms"])[-1, -1] + np.array(t["mlp_ms"])[-1])
    np.testing.assert_allclose(table.token_scale, np.array(t["chain_ms"]) / parts, rtol=1e-12)
    assert table.tokens == [3, 4, 20, 50]
    plan = uvc.random_plan(spec, np.random.default_rng(0), drop_prob=1.0)
    assert plan.layers[1].tokens < spec.num_tokens and table.predict(plan) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(device="nonsense"), "unknown device"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(dtype=torch.float64), "dtype must be one of"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(dtype=torch.float16), "float16 on the CPU"),
    (dict(dtype="float16"), "float16 on the CPU"),
    (dict(repeats=2), "repeats must be >= 3"),
    (dict(v_dims=[4, 8, 16]), "v_dims must start at 1"),
    (dict(v_dims=[1, 8]), "v_dims must end at 16"),
    (dict(v_dims=[1, 8, 8, 16]), "v_dims must be strictly increasing"),
    (dict(v_dims=[1, 16, 8]), "v_dims must be strictly increasing"),
    (dict(v_dims=[1, 8.0, 16]), "v_dims must hold ints"),
    (dict(neurons=[1, 100]), "neurons must end at 256"),
    (dict(neurons=[]), "neurons must start at 1"),
    (dict(tokens=[3, 30]), "tokens must end at 50"),
    (dict(tokens=[0, 50]), "tokens must be strictly increasing counts >= 1"),
    (dict(tokens=[3, 3, 50]), "tokens must be strictly increasing"),
    (dict(tokens="all"), "tokens must be a list of ints"),
    (dict(config={"fused_attn": False}), "sdpa"),
    (dict(config={"act": "relu6"}), "act must be one of"),
])
def test_bad_arguments_fail_before_measuring(kwargs, match):
    with pytest.raises(ValueError, match=match):
        profile(DEMO, **{"repeats": 3, "progress": False, **kwargs})


def test_flags_that_are_not_bools_are_refused():
    for name in ("sdpa", "steady_malloc"):
        with pytest.raises(TypeError, match=f"{name} must be a bool, got str"):
            profile(DEMO, repeats=3, progress=False, **{name: "yes"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ValueError, match="no CUDA device"):
        profile(DEMO, device="cuda", progress=False)


@pytest.mark.parametrize("changes", [dict(gated_mlp=True, pool="avg", fc_norm=True, prefix_tokens=0, class_token=False),
                                     dict(qk_norm=True, pre_norm=True, prefix_tokens=2, classifier_heads=2)])
def test_layout_variants_explicit_attention_and_bfloat16(changes):
    spec = DEMO.replace(depth=2, **changes)
    t = profile(spec, sdpa=False, dtype="bfloat16", config={"act": "silu", "init_values": 1e-5}, **FAST)
    assert t["device"]["sdpa"] is False and t["device"]["dtype"] == "bfloat16"
    assert all(math.isfinite(x) and x > 0 for x in np.ravel(t["attention_ms"]).tolist() + np.ravel(t["mlp_ms"]).tolist())


def test_timm_and_slim_models_give_their_spec():
    timm = pytest.importorskip("timm")
    from uvc.torch.introspect import spec_from_model
    from uvc.torch.slim import SlimViT
    from uvc.plan import ArchPlan
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
                              num_classes=10, embed_dim=32, depth=2, num_heads=4, qkv_bias=False)
    spec = spec_from_model(model)
    grids = dict(FAST, v_dims=[1, 8], neurons=[1, 128])
    assert profile(model, **grids)["spec"] == spec.to_dict()
    slim = SlimViT(spec, ArchPlan.dense(spec), qkv_bias=False)
    assert profile(slim, **grids)["spec"] == spec.to_dict()


def test_profile_main_writes_the_table(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = profile_main(["demo", "--repeats", "3", "--warmup", "1", "--threads", "1", "--v-dims", "1", "16",
                       "--neurons", "1", "256", "--quiet", "--out", str(out)])
    assert rc == 0
    t = load_table(out)
    assert t["v_dims"] == [1, 16] and t["neurons"] == [1, 256] and t["spec"]["embed_dim"] == 64
    printed = capsys.readouterr().out
    assert "dense" in printed and "fixed" in printed and "the measured dense ms" in printed
    assert profile_main(["demo", "--dtype", "float16", "--quiet", "--out", str(out)]) == 2
    assert "float16 on the CPU" in capsys.readouterr().err

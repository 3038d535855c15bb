"""PNG plots of plans and training logs; forward latency of timm ViTs on the CPU."""
import struct
import subprocess
import sys

import numpy as np
import pytest

import uvc
from uvc.plots import TRAINING_LOG_FIGURE_PX, architecture_figure_px, plot_architecture, plot_training_log


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def spec():
    return uvc.ViTSpec.from_name("deit_small_patch16_224")


def test_architecture_png_random_and_dense(spec, rng, tmp_path):
    plan = uvc.random_plan(spec, rng)
    assert any(l.tokens < spec.num_tokens for l in plan.layers)  # the token axis is drawn
    rates = rng.random((spec.depth, 2))
    out = plot_architecture(plan, tmp_path / "random.png", title="random", execution_rates=rates,
                            dense_plan=uvc.random_plan(spec, rng))
    assert out == tmp_path / "random.png"
    assert png_size(out) == architecture_figure_px(12) == (1040, 600)
    assert out.stat().st_size > 10_000
    dense = plot_architecture(uvc.ArchPlan.dense(spec), str(tmp_path / "dense.png"))
    assert dense == str(tmp_path / "dense.png")
    assert png_size(dense) == (1040, 600)


def test_architecture_figure_width_follows_depth(tmp_path):
    assert architecture_figure_px(2) == (900, 600)
    assert architecture_figure_px(24) == (1880, 600)
    assert architecture_figure_px(100) == (2400, 600)
    spec = uvc.ViTSpec(depth=24, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28)
    path = plot_architecture(uvc.random_plan(spec, np.random.default_rng(0)), tmp_path / "deep.png")
    assert png_size(path) == (1880, 600)


def test_architecture_rejects_bad_input(spec, rng, tmp_path):
    plan = uvc.random_plan(spec, rng)
    with pytest.raises(TypeError, match="plan must be an ArchPlan, got dict"):
        plot_architecture(plan.to_dict(), tmp_path / "x.png")
    with pytest.raises(TypeError, match="path must be a str"):
        plot_architecture(plan, 3)
    with pytest.raises(TypeError, match="dense_plan must be an ArchPlan"):
        plot_architecture(plan, tmp_path / "x.png", dense_plan=spec)
    tiny = uvc.ArchPlan.dense(uvc.ViTSpec.from_name("deit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="dense_plan was built for a different spec"):
        plot_architecture(plan, tmp_path / "x.png", dense_plan=tiny)
    with pytest.raises(ValueError, match=r"execution_rates must have shape \(12, 2\)"):
        plot_architecture(plan, tmp_path / "x.png", execution_rates=np.ones((2, 12)))
    with pytest.raises(ValueError, match=r"execution_rates must lie in \[0, 1\]"):
        plot_architecture(plan, tmp_path / "x.png", execution_rates=np.full((12, 2), 1.5))
    assert not (tmp_path / "x.png").exists()


def test_training_log_png(tmp_path):
    records = [{"epoch": e, "loss": 2.0 / (e + 1), "acc": 0.1 + 0.08 * e, "expected_ratio": 1 - 0.05 * e,
                "plan_ratio": 1 - 0.06 * e, "z": 0.1 * e, "budget_ratio": 0.5} for e in range(10)]
    del records[3]["plan_ratio"]  # a key missing from some records is skipped there
    path = plot_training_log(records, tmp_path / "log.png", title="run")
    assert png_size(path) == TRAINING_LOG_FIGURE_PX == (1000, 800)
    # Only z, no epochs: still a figure of the same size.
    path = plot_training_log([{"z": 0.0}, {"z": 0.3}], tmp_path / "z.png")
    assert png_size(path) == (1000, 800) and path.stat().st_size > 5_000


def test_training_log_reads_the_keys_the_solver_logs():
    from uvc.plots import _TRAINING_KEYS
    stats = uvc.Solver(uvc.ViTSpec.from_name("deit_tiny_patch16_224"), 0.5).stats()
    assert set(_TRAINING_KEYS) - {"epoch", "loss", "acc"} <= set(stats)


def test_training_log_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="records must be a list of dicts, got dict"):
        plot_training_log({"loss": 1.0}, tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"records\[1\] must be a dict"):
        plot_training_log([{"loss": 1.0}, 2.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"records\[0\]\['loss'\] must be a finite number"):
        plot_training_log([{"loss": float("nan")}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="records hold none of the keys"):
        plot_training_log([{"epoch": 1, "lr": 0.1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'epoch' must be in every record or in none"):
        plot_training_log([{"epoch": 0, "loss": 1.0}, {"loss": 0.5}], tmp_path / "x.png")


def test_import_uvc_plots_loads_no_pyplot():
    code = ("import sys, uvc, uvc.plots; assert 'matplotlib' not in sys.modules; "
            "spec = uvc.ViTSpec.from_name('deit_tiny_patch16_224'); "
            "uvc.plots.plot_architecture(uvc.ArchPlan.dense(spec), sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, "/dev/null"], check=True)


# ---- latency (torch, imported inside so the plot tests run without it) ----

def tiny_vit(depth: int = 2):
    import timm
    import torch
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1,
                             num_classes=10, embed_dim=32, depth=depth, num_heads=2)


def test_measure_latency_stats_and_restored_state():
    import torch
    from uvc.torch.latency import measure_latency
    model = tiny_vit()
    model.train()
    model.blocks[0].eval()  # a mixed state must come back exactly, not as model.train()
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1  # differs from the current count, so a leak would show
    res = measure_latency(model, (1, 28, 28), (1, 8), warmup=1, repeats=5, threads=threads)
    assert torch.get_num_threads() == before
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    assert sorted(res) == [1, 8]
    for b, r in res.items():
        assert set(r) == {"median_ms", "p10_ms", "p90_ms", "images_per_s", "page_faults"}
        assert r["page_faults"] >= 0
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["images_per_s"] == pytest.approx(b * 1000 / r["median_ms"])
    model.eval()
    measure_latency(model, [1, 28, 28], (2,), warmup=0, repeats=1)
    assert not model.training and not model.blocks[1].training


def test_measure_latency_rejects_bad_arguments():
    import torch
    from uvc.torch.latency import measure_latency
    model = tiny_vit()
    shape = (1, 28, 28)
    for bad, err, msg in (((0, 8), ValueError, r"batch_sizes\[0\] must be >= 1"),
                          ((1, -4), ValueError, r"batch_sizes\[1\] must be >= 1"),
                          ((1.5,), TypeError, r"batch_sizes\[0\] must be an int"),
                          ((True,), TypeError, r"batch_sizes\[0\] must be an int"),
                          (64, TypeError, "batch_sizes must be a sequence"),
                          ((), ValueError, "batch_sizes is empty"),
                          ((4, 4), ValueError, "batch_sizes has duplicates")):
        with pytest.raises(err, match=msg):
            measure_latency(model, shape, bad)
    with pytest.raises(ValueError, match=r"input_shape must have 3 entries"):
        measure_latency(model, (28, 28), (1,))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple"):
        measure_latency(model, 28, (1,))
    with pytest.raises(ValueError, match=r"input_shape\[0\] must be >= 1"):
        measure_latency(model, (0, 28, 28), (1,))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        measure_latency(lambda x: x, shape, (1,))
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_latency(model, shape, (1,), repeats=0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        measure_latency(model, shape, (1,), threads=0)
    with pytest.raises(ValueError, match="lives on cpu"):
        measure_latency(model, shape, (1,), device="meta")
    with pytest.raises(TypeError, match="steady_malloc must be a bool"):
        measure_latency(model, shape, (1,), steady_malloc="yes")
    assert model.training  # untouched by the rejected calls
    assert torch.get_num_threads() >= 1


STEADY_SCRIPT = """
import json, torch
from uvc.torch.latency import measure_latency, steady_malloc

class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2

# A 41 MB output: above glibc's largest mmap threshold, so by default every pass maps it anew.
shape = (1, 2500, 4096)
before = measure_latency(Double(), shape, (1,), warmup=1, repeats=5, steady_malloc=False)[1]["page_faults"]
took = steady_malloc()
after = measure_latency(Double(), shape, (1,), warmup=1, repeats=5)[1]["page_faults"]
print(json.dumps([before, took, after, steady_malloc()]))
"""


def test_steady_malloc_stops_the_page_faults_of_each_pass():
    """By default glibc maps a large output anew on every pass: thousands of page faults, counted
    per pass. After `steady_malloc` the process keeps the memory: none. A fresh process, since
    the setting holds for the rest of a process."""
    import json
    import platform
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", STEADY_SCRIPT], capture_output=True, text=True, check=True)
    before, took, after, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert took is again
    if platform.libc_ver()[0] != "glibc":
        assert took is False
        return
    assert took is True
    assert before > 5000, "41 MB is 10 000 pages of 4 KiB: each pass faults most of them in"
    assert after == 0


def test_compare_latency_shallow_model_is_faster():
    from uvc.torch.latency import compare_latency
    models = {"deep": tiny_vit(8), "shallow": tiny_vit(2)}
    # One thread: on a shared machine, oversubscribed OpenMP threads make timings erratic.
    res = compare_latency(models, (1, 28, 28), (1, 64), warmup=2, repeats=9, threads=1)
    assert list(res) == ["deep", "shallow"]
    for b in (1, 64):
        assert res["deep"][b]["ratio"] == 1.0
        assert res["shallow"][b]["ratio"] == pytest.approx(
            res["shallow"][b]["median_ms"] / res["deep"][b]["median_ms"])
    # 2 of 8 blocks, same width: about 0.3 of the time measured; 0.7 leaves room for noise.
    assert res["shallow"][64]["ratio"] < 0.7
    assert res["shallow"][64]["images_per_s"] > res["deep"][64]["images_per_s"]
    with pytest.raises(ValueError, match="models is empty"):
        compare_latency({}, (1, 28, 28), (1,))
    with pytest.raises(TypeError, match=r"models\['x'\] must be a torch.nn.Module"):
        compare_latency({"x": 3}, (1, 28, 28), (1,))

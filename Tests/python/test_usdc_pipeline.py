"""USDC end to end on a tiny timm ViT with real Fashion-MNIST images: stage 1 → export →
reload → stage 2 → evaluation at several batch sizes; exact resume; the CLI."""
import json

import numpy as np
import pytest
import timm
import torch

from conftest import TINY
from uvc.cli import main
from uvc.settings import USDC_FINETUNE
from uvc.torch.usdc import DynamicViT, load
from uvc.torch.usdc.pipeline import evaluate_batch_sizes, finetune, latency_on_data, search


def stage2(s):
    """The settings of ``s`` that stage 2 takes."""
    return {k: v for k, v in s.items() if k in USDC_FINETUNE.names}


def settings(tmp, ckpt, **over):
    s = dict(model="vit_tiny_patch16_224", model_kwargs=TINY, checkpoint=ckpt, data="fashion-mnist", subset=256,
             eval_subset=128, train_batch_size=64, learning_rate=1e-3, weight_decay=0.0, target=0.6, num_epochs=2,
             arch_lr=0.2, gate_lr=0.05, gate_init=1.0, neuron_group_size=16, distillation_type="soft",
             distillation_alpha=0.5, distillation_tau=1.0, seed=3, output_dir=str(tmp), device="cpu",
             checkpoint_every=3, progress=False)
    s.update(over)
    return s


def test_search_export_reload_finetune_evaluate(tmp_path, tiny_checkpoint):
    s1 = search(**settings(tmp_path, tiny_checkpoint))
    assert s1["max_abs_logit_diff"] < 1e-4, "the exported model computes what the searched model computed"
    assert s1["exported_acc"] == pytest.approx(s1["searched_acc"], abs=1e-9)
    records = [json.loads(line) for line in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["expected_ratio"] == pytest.approx(0.6, abs=0.1)
    assert len(s1["gate_choice"]) == 3 and len(s1["kept_heads"]) == 3
    assert s1["budget_ratio"] == 0.6 and s1["budget_met"] == (s1["plan_ratio"] <= 0.6 * 1.01)
    model = load(tmp_path / "stage1_model")
    assert isinstance(model, DynamicViT)
    arch = json.loads((tmp_path / "plan.json").read_text())
    assert [len(layer["heads"]) for layer in arch["layers"]] == [len(l.heads) for l in model.plan.layers]
    s2 = finetune(**stage2(settings(tmp_path, tiny_checkpoint, model=str(tmp_path / "stage1_model"),
                                    teacher="vit_tiny_patch16_224", teacher_checkpoint=tiny_checkpoint, epochs=1)))
    final = load(tmp_path / "model")
    res = evaluate_batch_sizes(final, (1, 8, 128), eval_subset=128, seed=3)
    # Stage 2 evaluated the 128 images as one batch too.
    assert res[128]["acc"] == pytest.approx(s2["acc"])
    assert s2["plan_ratio"] == pytest.approx(res[128]["ratio"]) and s2["budget_met"] == (s2["ratio"] <= 0.6 * 1.01)
    for b in (1, 8, 128):
        assert 0 <= res[b]["acc"] <= 100 and 0 < res[b]["ratio"] <= 1.05
        rates = np.array(res[b]["rates"], dtype=float)
        assert rates.shape == (3, 2) and np.all((np.isnan(rates)) | ((rates >= 0) & (rates <= 1)))
    ms = latency_on_data({"final": final}, (1, 8), images=16, repeats=1)
    assert ms["final"][1] > 0 and ms["final"][8] > 0


def test_search_resumes_exactly(tmp_path, tiny_checkpoint):
    full = tmp_path / "full"
    search(**settings(full, tiny_checkpoint))
    cut = tmp_path / "cut"
    assert search(**settings(cut, tiny_checkpoint, stop_after=3)) == {"stopped_at_step": 3}
    search(**settings(cut, tiny_checkpoint, resume=True))
    a = torch.load(full / "stage1" / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "stage1" / "checkpoint.pt", weights_only=False)
    assert a["compressor"] == b["compressor"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)


def test_cli_usdc_stages_and_demo(tmp_path, capsys):
    out = tmp_path / "cli"
    common = ["--subset", "128", "--eval-subset", "64", "--batch-size", "64", "--output_dir", str(out), "--no-progress"]
    assert main(["usdc-search", "--model", "demo", "--epochs", "1", "--target", "0.7", "--budget-mode", "dual"]
                + common) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("\n{") + 1:])  # after the epoch lines
    assert summary["target"] == 0.7 and summary["z"] > 0
    assert main(["usdc-finetune", "--model", str(out / "stage1_model"), "--epochs", "1"] + common) == 0
    assert load(out / "model").spec.depth == 6
    demo = tmp_path / "demo"
    assert main(["demo", "--method", "usdc", "--usdc-methods", "usdc", "--subset", "128", "--search-epochs", "1",
                 "--finetune-epochs", "1", "--eval-subset", "64", "--batch-sizes", "1", "8",
                 "--output_dir", str(demo)]) == 0
    results = json.loads((demo / "results.json").read_text())["results"]
    assert set(results) == {"dense", "usdc"} and set(results["usdc"]) >= {"1", "8", "params"}
    capsys.readouterr()
    # A finished run is evaluated again, not retrained.
    assert main(["demo", "--method", "usdc", "--usdc-methods", "usdc", "--eval-subset", "64", "--batch-sizes", "1",
                 "--output_dir", str(demo)]) == 0
    assert "usdc: reusing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["usdc-search", "--model", "demo", "--grouping", "random"] + common)

"""The dense models shipped in python/uvc/assets: the architecture the docs promise, weights that
score on all 10 000 test images what their description records, and a training log beside the
script that shows the run converged (scripts/logs)."""
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import uvc  # noqa: E402
from uvc.torch import count_macs  # noqa: E402
from uvc.torch.data import make_loader  # noqa: E402
from uvc.torch.introspect import spec_from_model  # noqa: E402
from uvc.torch.pipeline import ASSETS, SHIPPED, load_model  # noqa: E402
from uvc.torch.train import evaluate  # noqa: E402

LOGS = Path(__file__).resolve().parents[2] / "scripts" / "logs"
# name: (depth, width, heads, MLP width, tokens); README "Side by side with Torch-Pruning".
SHAPES = {"demo": (6, 64, 4, 256, 50), "deep": (12, 48, 3, 192, 50)}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_has_its_shape_and_scores_what_its_description_records(name):
    model, meta = load_model(name)
    spec = spec_from_model(model)
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden, spec.num_tokens) == SHAPES[name]
    macs = count_macs(model, torch.zeros(1, 1, 28, 28))["macs"]
    assert macs == uvc.count(spec, uvc.ArchPlan.dense(spec), "fvcore").macs
    assert 15e6 < macs < 25e6, "both models cost about the same: block skipping, not size, tells them apart"
    test = make_loader("fashion-mnist", "test", 1000, image_size=spec.image_size, in_chans=spec.in_channels)
    assert abs(evaluate(model, test, torch.device("cpu")) - meta["test_accuracy"]) <= 0.05  # 5 images


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_comes_with_the_log_of_a_converged_run(name):
    meta = json.loads((ASSETS / f"{SHIPPED[name]}.json").read_text())
    assert meta["converged"] and meta["gain_last_5"] < 0.2
    assert meta["trained_with"].startswith(f"python scripts/train_dense.py --model {name} --epochs {meta['epochs']}")
    logged = LOGS / f"{SHIPPED[name]}_cosine{meta['epochs']}.json"
    assert json.loads(logged.read_text()) == meta, f"{logged} is the description of the shipped weights"
    curve = [json.loads(line)["test_accuracy"]
             for line in logged.with_suffix(".log.jsonl").read_text().splitlines() if line.strip()]
    assert curve == meta["curve"] and len(curve) == meta["epochs"] and curve[-1] == meta["test_accuracy"]

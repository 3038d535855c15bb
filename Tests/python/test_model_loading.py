"""A user's own checkpoint with its own class count and image size, from the command line:
shapes read from the checkpoint, flags that override them, one line per mismatch, and a
missing model folder said to be missing; end to end on an ImageFolder made here."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_vit_checkpoint
from uvc.cli import main
from uvc.torch import load
from uvc.torch.pipeline import load_model

# A 2-class RGB ViT at 28 px: what a user's fine-tune looks like, small.
OWN = dict(img_size=28, patch_size=7, in_chans=3, num_classes=2, embed_dim=32, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory):
    return random_vit_checkpoint(tmp_path_factory.mktemp("own"), "my_vit", **OWN)


def test_the_checkpoint_gives_the_class_count_and_image_size(own_checkpoint):
    path, reference = own_checkpoint
    # Only the widths that timm cannot read from tensors' names are given.
    model, meta = load_model("vit_tiny_patch16_224", path, embed_dim=32, depth=2, num_heads=4)
    assert meta["kwargs"] == {"num_classes": 2, "in_chans": 3, "patch_size": 7, "img_size": 28, "embed_dim": 32,
                              "depth": 2, "num_heads": 4}
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))


def test_a_checkpoint_that_does_not_fit_lists_the_differences(own_checkpoint):
    path, _ = own_checkpoint
    with pytest.raises(ValueError) as info:
        load_model("vit_tiny_patch16_224", path, embed_dim=32, depth=2, num_heads=4, num_classes=3)
    text = str(info.value)
    assert "--checkpoint" in text and "shape of head.weight: checkpoint (2, 32), model (3, 32)" in text
    assert "shape of head.bias: checkpoint (2,), model (3,)" in text
    with pytest.raises(FileNotFoundError, match="--model runs/missing/stage1_model: no such folder"):
        load_model("runs/missing/stage1_model")
    with pytest.raises(ValueError, match="not 'demo', an exported folder, or a timm model name"):
        load_model("no_such_model")
    with pytest.raises(FileNotFoundError, match="--checkpoint nowhere.pth: no such file"):
        load_model("vit_tiny_patch16_224", "nowhere.pth")


def _image_folder(root, per_class=8):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, colour in (("cats", 40), ("dogs", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(colour, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return str(root)


def test_own_checkpoint_and_image_folder_end_to_end(tmp_path, own_checkpoint):
    path, _ = own_checkpoint
    data = _image_folder(tmp_path / "images")
    arch = json.dumps(dict(embed_dim=32, depth=2, num_heads=4))
    common = ["--data", data, "--device", "cpu", "--no-progress", "--batch-size", "8", "--eval-batch-size", "8"]
    out = tmp_path / "run"
    assert main(["compress", "--model", "vit_tiny_patch16_224", "--checkpoint", path, "--num-classes", "2",
                 "--model-kwargs", arch, "--num_epochs", "1", "--warmup_epochs", "0.5", "--budget", "0.7",
                 "--output_dir", str(out), *common]) == 0
    assert main(["finetune", "--model", str(out / "stage1_model"), "--teacher", "vit_tiny_patch16_224",
                 "--teacher-checkpoint", path, "--model-kwargs", arch, "--epochs", "1", "--output_dir", str(out),
                 *common]) == 0
    final = load(out / "model")
    with torch.no_grad():
        assert final.eval()(torch.rand(1, 3, 28, 28)).shape == (1, 2)
    saved = json.loads((out / "settings.json").read_text())
    assert saved["teacher_checkpoint"] == path and saved["num_classes"] is None
    assert main(["compress", "--model", "vit_tiny_patch16_224", "--checkpoint", path, "--num-classes", "3",
                 "--model-kwargs", arch, "--output_dir", str(tmp_path / "bad"), *common]) == 2

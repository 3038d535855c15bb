import os

import numpy as np
import pytest

# CI must not silently skip the torch tests: .ci/run sets UVC_REQUIRE_TORCH=1.
if os.environ.get("UVC_REQUIRE_TORCH") == "1":
    import timm  # noqa: F401
    import torch  # noqa: F401


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# The tiny timm ViT the end-to-end tests train on real Fashion-MNIST images.
TINY = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=4)


def random_vit_checkpoint(folder, name: str, **kwargs):
    """Seeded random weights of a small timm ViT saved as ``folder/name``.safetensors; returns
    (path, model)."""
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    path = folder / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    return str(path), model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Seeded random weights of the `TINY` ViT, saved as safetensors; returns the path."""
    return random_vit_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", **TINY)[0]

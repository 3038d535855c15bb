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

"""SlimViT from timm (structure, modes, distilled heads, refusals), save/load without training code,
ONNX export, and the errors each step raises."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import uvc
from uvc.torch import SlimViT, export_onnx, load, save, spec_from_model


def distilled_timm():
    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=12, patch_size=4, embed_dim=24, depth=3, num_heads=3,
                                       init_values=0.5, num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def plan_with_removed_block(spec):
    """A random plan whose block 1 is removed and block 2 keeps its MLP only."""
    plan = uvc.random_plan(spec, np.random.default_rng(5), skip_prob=0.0, tokens=False, qk=True)
    layers = list(plan.layers)
    layers[1] = dataclasses.replace(layers[1], heads=(), v_index=(), qk_index=(), neurons=(), attn=False, mlp=False)
    layers[2] = dataclasses.replace(layers[2], heads=(), v_index=(), qk_index=(), attn=False)
    return uvc.ArchPlan(spec, tuple(layers))


@pytest.fixture
def timm_model():
    return distilled_timm()


@pytest.fixture
def slim(timm_model):
    return SlimViT.from_timm(timm_model, plan_with_removed_block(spec_from_model(timm_model)))


def images(n=3, seed=0):
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_from_timm_structure(timm_model, slim):
    plan = slim.plan
    assert slim.block_index == (0, 2) and len(slim.blocks) == 2
    first, mlp_only = slim.blocks
    assert first.attn.num_heads == len(plan.layers[0].heads) and first.attn.v_dim == plan.layers[0].v_dim
    layer = plan.layers[0]
    assert first.attn.qkv.out_features == len(layer.heads) * (2 * layer.qk_dim + layer.v_dim)
    assert first.attn.qk_dim == plan.layers[0].qk_dim < 8 and first.attn.scale == 8 ** -0.5, "the dense logit scale"
    assert mlp_only.attn is None and mlp_only.norm1 is None and mlp_only.ls1 is None
    assert mlp_only.mlp.fc1.out_features == len(plan.layers[2].neurons)
    assert not any(k.startswith(("blocks.2", "blocks.1.attn", "blocks.1.norm1")) for k in slim.state_dict())
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in timm_model.parameters())
    assert not slim.training  # follows the source model's mode
    assert SlimViT.from_timm(timm_model.train(), plan).training


def test_dense_plan_reproduces_timm_in_both_modes(timm_model):
    spec = spec_from_model(timm_model)
    slim = SlimViT.from_timm(timm_model, uvc.ArchPlan.dense(spec))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(slim(x), timm_model(x), atol=1e-5, rtol=1e-5)
        # Distilled training mode returns both heads, like timm.
        timm_model.train().set_distilled_training(True)
        slim.train().distilled_training = True
        for a, b in zip(slim(x), timm_model(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        slim.eval()
        assert isinstance(slim(x), torch.Tensor)


@pytest.mark.parametrize("qk_dim, v_dim", [(8, 1), (8, 5), (8, 8), (3, 8), (1, 5)])
def test_sdpa_with_unequal_widths_equals_explicit_attention(qk_dim, v_dim):
    # SDPA pads the narrower of the value and the q/k width with zeros: outputs and gradients are
    # the explicit path's, and the padding never reaches the output or the weights.
    from uvc.torch.slim import SlimAttention
    torch.manual_seed(0)
    attn = SlimAttention(24, 3, qk_dim, v_dim, qk_norm=qk_dim == 8, scale=8 ** -0.5).double()
    x = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    results = []
    for fused in (True, False):
        attn.fused_attn = fused
        attn.zero_grad()
        x.grad = None
        out = attn(x)
        out.square().sum().backward()
        results.append((out, x.grad.clone(), attn.qkv.weight.grad.clone(), attn.proj.weight.grad.clone()))
    assert results[0][0].shape == (2, 7, 24)
    for fused, explicit in zip(*results):
        torch.testing.assert_close(fused, explicit, atol=1e-12, rtol=1e-10)


def test_from_timm_refusals(timm_model):
    spec = spec_from_model(timm_model)
    dense = uvc.ArchPlan.dense(spec)
    other = uvc.ArchPlan.dense(spec.replace(num_classes=4))
    with pytest.raises(ValueError, match="does not match the model"):
        SlimViT.from_timm(timm_model, other)
    with pytest.raises(TypeError, match="plan must be an ArchPlan"):
        SlimViT.from_timm(timm_model, dense.to_dict())
    with pytest.raises(TypeError, match="spec must be a ViTSpec"):
        SlimViT("deit", dense)
    with pytest.raises(ValueError, match="act must be one of"):
        SlimViT(spec, dense, act="erf")
    with pytest.raises(ValueError, match="class_token=False disagrees with the spec's class_token=True"):
        SlimViT(spec, dense, class_token=False)
    headless = uvc.ViTSpec.from_name("deit_tiny_patch16_224", class_token=False)  # one register token
    with pytest.raises(ValueError, match="without a class token needs pool 'avg' or 'map'"):
        SlimViT(headless, uvc.ArchPlan.dense(headless))
    with pytest.raises(ValueError, match=r"input size \(16, 16\) != model image size \(12, 12\)"):
        SlimViT(spec, dense)(torch.zeros(1, 3, 16, 16))


def test_save_load_roundtrip(slim, tmp_path):
    x = images()
    slim.meta = {"mean": [0.5, 0.5, 0.5], "classes": ["a", "b"]}
    save(slim, tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    assert arch["format"] == "uvc.slim/1" and arch["meta"]["classes"] == ["a", "b"]
    assert arch["config"] == dict(qkv_bias=True, proj_bias=True, norm_eps=1e-6, init_values=0.5,
                                  act="gelu", no_embed_class=False, class_token=True, fused_attn=True)
    assert uvc.ViTSpec.from_dict(arch["spec"]) == slim.spec
    loaded = load(tmp_path / "m")
    assert not loaded.training and loaded.plan == slim.plan and loaded.meta == slim.meta
    assert loaded.block_index == slim.block_index
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    # Explicit meta wins; other dtypes survive the trip.
    save(slim.double(), tmp_path / "d", meta={"note": 1})
    loaded = load(tmp_path / "d", device="cpu")
    assert loaded.meta == {"note": 1} and loaded.cls_token.dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(loaded(x.double()), slim(x.double()))


def test_a_folder_saved_by_uvc_0_2_0_loads(slim, tmp_path):
    """0.2.0 wrote the activation as ``gelu_approximate``; such a folder still loads."""
    save(slim, tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    arch["config"].pop("act"), arch["config"].pop("class_token")
    arch["config"]["gelu_approximate"] = "none"
    (tmp_path / "m" / "arch.json").write_text(json.dumps(arch))
    loaded = load(tmp_path / "m")
    assert loaded.config["act"] == "gelu"
    with torch.no_grad():
        assert torch.equal(loaded(images()), slim(images()))


def test_a_folder_without_a_class_token_in_its_spec_loads(tmp_path):
    """Before the spec had ``class_token``, the layer configuration alone said a model had none:
    a register-only, average-pooled model saved that way loads without a class token."""
    from test_torch_counts import small_timm
    model = small_timm("avg_registers_no_class", seed=2)
    spec = spec_from_model(model)
    assert not spec.class_token and spec.prefix_tokens == 2
    slim = SlimViT.from_timm(model, uvc.ArchPlan.dense(spec))
    save(slim, tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    assert arch["spec"].pop("class_token") is False and arch["config"]["class_token"] is False
    (tmp_path / "m" / "arch.json").write_text(json.dumps(arch))
    loaded = load(tmp_path / "m")
    assert loaded.spec == spec and loaded.cls_token is None and loaded.reg_token.shape[1] == 2
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_load_in_fresh_process_without_training_code(slim, tmp_path):
    save(slim, tmp_path / "m")
    x = images(2, seed=1)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch, uvc.torch\n"
        f"model = uvc.torch.load({str(tmp_path / 'm')!r})\n"
        f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})).detach(), {str(tmp_path / 'y.pt')!r})\n"
        "training = ('uvc.torch.compress', 'uvc.torch.train', 'uvc.torch.pipeline', 'uvc.torch.distill')\n"
        "loaded = [m for m in sys.modules if m in ('timm', 'fvcore') + training]\n"
        "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    with torch.no_grad():
        # The same numbers up to float rounding: the two processes may pick other CPU kernels.
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), slim(x), rtol=0, atol=1e-6)


def test_onnx_export_runs_in_onnxruntime(slim, tmp_path):
    path = export_onnx(slim, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    assert all(b.attn.fused_attn for b in slim.blocks if b.attn is not None)  # restored after export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    x = images(4)  # traced at batch 1: the batch axis is dynamic
    out = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, slim(x).numpy(), atol=1e-4, rtol=1e-4)


def test_export_errors(slim, timm_model, tmp_path):
    with pytest.raises(TypeError, match="save: model must be a uvc.torch.SlimViT"):
        save(timm_model, tmp_path / "t")
    with pytest.raises(TypeError, match="save: meta is not JSON-serialisable"):
        save(slim, tmp_path / "t", meta={"f": object()})
    with pytest.raises(ValueError, match="export_onnx: batch_size"):
        export_onnx(slim, tmp_path / "m.onnx", batch_size=0)
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=str(missing / "arch.json")):
        load(missing)

    save(slim, tmp_path / "m")
    arch, weights = tmp_path / "m" / "arch.json", tmp_path / "m" / "model.safetensors"
    good_arch, good_weights = arch.read_text(), weights.read_bytes()
    arch.write_text(good_arch[:40])
    with pytest.raises(ValueError, match=f"arch.json at {arch} is truncated or not JSON"):
        load(tmp_path / "m")
    arch.write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(ValueError, match=f"{arch} has format 'something/else', expected format 'uvc.slim/1'"):
        load(tmp_path / "m")
    arch.write_text(json.dumps({**json.loads(good_arch), "plan": {"format": "uvc.plan/1"}}))
    with pytest.raises(ValueError, match=f"{arch} is malformed"):
        load(tmp_path / "m")
    arch.write_text(good_arch)
    weights.write_bytes(good_weights[:100])
    with pytest.raises(ValueError, match=f"model.safetensors at {weights} is truncated or not a safetensors file"):
        load(tmp_path / "m")
    # Weights of another plan: names or shapes differ.
    other = SlimViT.from_timm(timm_model, uvc.ArchPlan.dense(slim.spec))
    save(other, tmp_path / "o")
    weights.write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=f"{weights} does not match"):
        load(tmp_path / "m")


def test_register_tokens_and_no_embed_class_roundtrip(tmp_path):
    torch.manual_seed(1)
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=2, reg_tokens=2,
                              no_embed_class=True, qkv_bias=False, num_classes=3).eval()
    plan = uvc.random_plan(spec_from_model(model), np.random.default_rng(2), skip_prob=0.0, tokens=False, qk=True)
    slim = SlimViT.from_timm(model, plan)
    assert slim.reg_token.shape == (1, 2, 12) and slim.pos_embed.shape == (1, 4, 12)
    save(slim, tmp_path / "r")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "r")(x), slim(x))

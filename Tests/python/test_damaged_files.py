"""Damaged or mismatched files: a clear error naming the file and what is wrong, and every file
already there left as it was."""
import json
import re

import numpy as np
import pytest
import timm
import torch

import uvc
from conftest import TINY
from uvc.torch import SlimViT, load, save, spec_from_model
from uvc.torch.pipeline import compress
from uvc.torch.train import fit
from uvc.torch.usdc import load as load_dynamic


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(path, how):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == "truncated" else bytes(np.random.default_rng(0).integers(
        0, 256, len(data), dtype=np.uint8)))


class Batches:
    """Four fixed batches of five 8-feature inputs with labels in 0..2."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(4, 5, 8, generator=g), torch.randint(0, 3, (4, 5), generator=g)

    def __len__(self):
        return len(self.x)

    def batches(self, epoch, first=0):
        return zip(self.x[first:], self.y[first:])


def tiny_fit(out, model=None, **kw):
    """`fit` of a linear model (or ``model``) on `Batches`; returns the records."""
    torch.manual_seed(0)
    model = model or torch.nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return fit(model, Batches(), epochs=2, optimizer=opt, scheduler=sched, out_dir=out, progress=False,
               criterion=lambda x, out, y: torch.nn.functional.cross_entropy(out, y), **kw)


def settings(tmp, ckpt, **over):
    """One stage-1 step of the tiny ViT on 128 images."""
    s = dict(model="vit_tiny_patch16_224", model_kwargs=TINY, checkpoint=ckpt, data="fashion-mnist", subset=128,
             eval_subset=64, train_batch_size=64, learning_rate=1e-3, budget=0.5, num_epochs=1, warmup_epochs=0.0,
             distillation_type="soft", distillation_alpha=0.5, distillation_tau=1.0, seed=0, output_dir=str(tmp),
             device="cpu", progress=False, stop_after=1)
    s.update(over)
    return s


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_damaged_checkpoint_is_refused_on_resume(tmp_path, how):
    tiny_fit(tmp_path, stop_after=2)
    ckpt = tmp_path / "checkpoint.pt"
    damage(ckpt, how)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"checkpoint.pt at {re.escape(str(ckpt))} is truncated or not a torch file"):
        tiny_fit(tmp_path, resume=True)
    assert snapshot(tmp_path) == before


def test_checkpoint_of_an_older_uvc_or_another_model_is_refused(tmp_path):
    tiny_fit(tmp_path, stop_after=2)
    ckpt = tmp_path / "checkpoint.pt"
    name = f"checkpoint.pt at {re.escape(str(ckpt))}"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"{name} holds the weights of another model"):
        tiny_fit(tmp_path, model=torch.nn.Linear(8, 5), resume=True)
    assert snapshot(tmp_path) == before
    state = torch.load(ckpt, weights_only=False)
    del state["format"]
    torch.save(state, ckpt)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"{name} has format None, expected 'uvc.checkpoint/1'"):
        tiny_fit(tmp_path, resume=True)
    assert snapshot(tmp_path) == before


def test_resume_refuses_another_model_or_budget(tmp_path, tiny_checkpoint):
    assert compress(**settings(tmp_path, tiny_checkpoint)) == {"stopped_at_step": 1}
    name = f"checkpoint.pt at {re.escape(str(tmp_path / 'stage1' / 'checkpoint.pt'))}"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"{name} was written by a run with budget=0.5, this run has budget=0.4"):
        compress(**settings(tmp_path, tiny_checkpoint, budget=0.4, resume=True))
    deeper = dict(TINY, depth=4)
    with pytest.raises(ValueError, match=f"{name} was written by a run with model_kwargs=.*'depth': 3.*'depth': 4"):
        compress(**settings(tmp_path, tiny_checkpoint, model_kwargs=deeper, checkpoint=None, resume=True))
    assert snapshot(tmp_path) == before


def test_resume_names_the_checkpoint_with_an_old_solver_state(tmp_path, tiny_checkpoint):
    compress(**settings(tmp_path, tiny_checkpoint))
    ckpt = tmp_path / "stage1" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    state["compressor"]["solver"]["format"] = "uvc.solver/0"
    torch.save(state, ckpt)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"checkpoint.pt at {re.escape(str(ckpt))} does not fit .*"
                                         "Solver.load_state_dict: expected a dict with format"):
        compress(**settings(tmp_path, tiny_checkpoint, resume=True))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_damaged_plan_json(tmp_path, how):
    path = tmp_path / "plan.json"
    uvc.ArchPlan.dense(uvc.ViTSpec.from_name("deit_tiny_patch16_224")).save(path)
    damage(path, how)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"plan.json at {re.escape(str(path))} is truncated or not JSON"):
        uvc.ArchPlan.load(path)
    assert path.read_bytes() == before


def test_plan_json_without_a_spec(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "uvc.plan/1", "layers": []}))
    with pytest.raises(ValueError, match=f"plan.json at {re.escape(str(path))} is not a plan: it lacks key 'spec'"):
        uvc.ArchPlan.load(path)


@pytest.fixture
def folder(tmp_path):
    """An exported SlimViT of the tiny ViT (dense plan)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    return save(SlimViT.from_timm(model, uvc.ArchPlan.dense(spec_from_model(model))), tmp_path / "m")


@pytest.mark.parametrize("loader", [load, load_dynamic], ids=["slim", "usdc"])
@pytest.mark.parametrize("file, what", [("arch.json", "is truncated or not JSON"),
                                        ("model.safetensors", "is truncated or not a safetensors file")])
@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_damaged_exported_folder(folder, loader, file, what, how):
    if loader is load_dynamic and file == "model.safetensors":
        arch = json.loads((folder / "arch.json").read_text())  # read past the format check to the weights
        (folder / "arch.json").write_text(json.dumps(dict(arch, format="uvc.usdc/1")))
    damage(folder / file, how)
    before = snapshot(folder)
    with pytest.raises(ValueError, match=f"{file} at {re.escape(str(folder / file))} {what}"):
        loader(folder)
    assert snapshot(folder) == before


def test_exported_folder_of_another_kind_or_model(folder, tmp_path):
    arch = folder / "arch.json"
    name = f"arch.json at {re.escape(str(arch))}"
    with pytest.raises(ValueError, match=f"{name} has format 'uvc.slim/1', expected format 'uvc.usdc/1'"):
        load_dynamic(folder)
    arch.write_text(json.dumps(dict(json.loads(arch.read_text()), format="uvc.usdc/1")))
    with pytest.raises(ValueError, match=f"{name} is malformed: no key 'gates'"):
        load_dynamic(folder)
    # Weights of a deeper model next to this arch.json.
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, **dict(TINY, depth=4))
    save(SlimViT.from_timm(other, uvc.ArchPlan.dense(spec_from_model(other))), tmp_path / "o")
    (folder / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    arch.write_text(json.dumps(dict(json.loads(arch.read_text()), format="uvc.slim/1")))
    before = snapshot(folder)
    with pytest.raises(ValueError, match=f"model.safetensors at .* does not match {name}"):
        load(folder)
    assert snapshot(folder) == before


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_uvc_flops_names_a_damaged_arch_json(folder, how, capsys):
    from uvc.cli import main
    damage(folder / "arch.json", how)
    before = snapshot(folder)
    with pytest.raises(SystemExit, match=f"uvc flops: arch.json at {re.escape(str(folder / 'arch.json'))} "
                                         "(is truncated or not JSON|does not hold a valid plan)"):
        main(["flops", str(folder)])
    assert snapshot(folder) == before

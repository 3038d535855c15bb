"""Two CPU processes under DistributedDataParallel (gloo): the solver stays identical on both ranks,
for the plain ViT and for a modern layout (registers without a class token, average pooling,
fc_norm, qk_norm, SwiGLU, token pruning ranked by received attention); a resumed run logs what the
uninterrupted one logs."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layout(name: str) -> tuple[dict, dict]:
    """timm keyword arguments and Compressor options of a layout the DDP test runs."""
    if name == "plain":
        return {}, {}
    from timm.layers import SwiGLU
    return (dict(class_token=False, reg_tokens=2, global_pool="avg", fc_norm=True, qk_norm=True, mlp_layer=SwiGLU,
                 act_layer=torch.nn.SiLU, patch_size=4),
            dict(prune_tokens=True, importance="group"))


def _worker(rank: int, world: int, port: int, out_dir: str, layout: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import timm
    from uvc.torch.compress import Compressor
    from uvc.torch.data import make_loader

    kwargs, options = _layout(layout)
    torch.manual_seed(0)  # same initial weights on both ranks, as DDP requires
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **dict(TINY, **kwargs))
    loader = make_loader("fashion-mnist", "train", 32, subset=256, seed=0, rank=rank, world_size=world)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    comp = Compressor(model, 0.5, steps_per_epoch=len(loader), optimizer=opt, warmup_epochs=0.0, seed=0, **options)
    net = torch.nn.parallel.DistributedDataParallel(model)
    for epoch in range(2):
        for x, y in loader.batches(epoch):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            comp.step()
    state = comp.state_dict()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"state": state, "steps": comp.step_count, "z": comp.solver.stats()["z"],
                   "tokens": comp.solver.token_keep().tolist()}, f, default=lambda a: a.tolist())
    dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["plain", "modern"])
def test_solver_state_identical_on_two_ranks(tmp_path, layout):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), layout), nprocs=2, join=True)
    a = json.loads((tmp_path / "rank0.json").read_text())
    b = json.loads((tmp_path / "rank1.json").read_text())
    assert a["steps"] == b["steps"] == 8
    assert a["state"] == b["state"] and a["tokens"] == b["tokens"]
    # The solver really moved: the budget dual rose from 0 while the cost was above budget.
    assert a["z"] > 0


def _linear_fit(out_dir, rank: int, world: int, **kw):
    """`uvc.torch.train.fit` of a linear classifier on this rank's share of 128 Fashion-MNIST
    images: 4 steps per epoch, 2 epochs."""
    from uvc.torch.data import make_loader
    from uvc.torch.train import fit
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    loader = make_loader("fashion-mnist", "train", 16, subset=128, seed=0, rank=rank, world_size=world)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    return fit(net, loader, epochs=2, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
               criterion=lambda x, out, y: torch.nn.functional.cross_entropy(out, y), out_dir=out_dir,
               progress=False, **kw)


def _resume_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out = Path(out_dir)
    _linear_fit(out / "full", rank, world)
    _linear_fit(out / "part", rank, world, stop_after=3)
    dist.barrier()  # rank 0 has written the checkpoint the other rank reads
    _linear_fit(out / "part", rank, world, resume=True)
    _linear_fit(out / "cut", rank, world, stop_after=3)
    dist.destroy_process_group()


def test_resume_under_ddp_logs_as_the_uninterrupted_run(tmp_path):
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    def log(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    assert len(log("full")) == 2 and log("part") == log("full")
    # Each rank's running sums are in the checkpoint; one process cannot go on from two ranks' sums.
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    assert len(torch.load(ckpt, weights_only=False)["sums"]) == 2
    with pytest.raises(ValueError, match=f"checkpoint.pt at {ckpt} was written by 2 processes, this run has 1"):
        _linear_fit(tmp_path / "cut", 0, 1, resume=True)



def _dying_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank 1 dies (os._exit) in its third step; rank 0 records what it raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from uvc.torch.data import make_loader
    from uvc.torch.train import fit
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    loader = make_loader("fashion-mnist", "train", 16, subset=128, seed=0, rank=rank, world_size=world)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = []

    def criterion(x, out, y):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os._exit(7)
        return torch.nn.functional.cross_entropy(out, y)
    try:
        fit(torch.nn.parallel.DistributedDataParallel(model), loader, epochs=2, optimizer=opt,
            scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), criterion=criterion,
            out_dir=Path(out_dir) / "part", progress=False, checkpoint_every=2)
    except RuntimeError as e:
        Path(out_dir, "rank0_error.txt").write_text(str(e))
        os._exit(1)


def _resume_after_death_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    _linear_fit(Path(out_dir) / "full", rank, world)
    _linear_fit(Path(out_dir) / "part", rank, world, resume=True)
    dist.destroy_process_group()


def test_a_rank_that_dies_stops_the_others_with_a_message_and_resume_continues(tmp_path):
    ctx = mp.get_context("spawn")  # plain processes: nothing kills rank 0 for us, as no launcher would
    port = _free_port()
    procs = [ctx.Process(target=_dying_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [1, 7], "rank 0 must stop by itself, not hang"
    message = (tmp_path / "rank0_error.txt").read_text()
    assert "rank 0 of 2 lost contact with another rank" in message
    assert f"The last checkpoint is {tmp_path / 'part' / 'checkpoint.pt'}" in message and "--resume" in message
    mp.spawn(_resume_after_death_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    def log(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
    assert len(log("full")) == 2 and log("part") == log("full")

"""The training loop both stages share: progress bars, a JSONL log, complete checkpoints,
exact resume, and DistributedDataParallel (only rank 0 writes)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["fit", "evaluate", "unwrap", "is_main_process", "save_checkpoint"]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device=None) -> float:
    """Top-1 accuracy in percent (all ranks' shares summed under DDP)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct = total = 0
    for x, y in loader.batches(0):
        out = model(x.to(device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        correct += (out.argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    correct, total = _all_sum([correct, total], device)
    return 100.0 * correct / max(total, 1)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write to a temporary file, then rename, so a kill never corrupts the last one."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(model: nn.Module, loader, *, epochs: int, optimizer: torch.optim.Optimizer,
        scheduler, criterion: Callable, out_dir: str | os.PathLike, compressor=None,
        eval_loader=None, resume: bool = False, checkpoint_every: int = 100, stop_after: int | None = None,
        desc: str = "train", config: dict | None = None, progress: bool = True) -> list[dict]:
    """Trains ``model`` for ``epochs`` epochs of ``loader.batches(epoch)``.

    Per step: ``loss = criterion(x, model(x), y)``, backward, optimizer and scheduler step,
    then ``compressor.step()`` when given. Writes ``checkpoint.pt`` (model, optimizer,
    scheduler, compressor, RNG and position) every ``checkpoint_every`` steps and at each
    epoch end, and one JSON line per epoch to ``log.jsonl``. With ``resume`` it continues
    from ``checkpoint.pt`` exactly where it stopped. ``stop_after``: return after this many
    optimizer steps of this call (after writing a checkpoint), as if killed there.
    Returns the epoch records.
    """
    out = Path(out_dir)
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    device = next(model.parameters()).device
    start_epoch, start_step, records = 0, 0, []
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if compressor is not None:
            compressor.load_state_dict(state["compressor"])
        torch.set_rng_state(state["rng"])
        start_epoch, start_step, records = state["epoch"], state["step"], state["records"]
    elif main and log_path.exists():
        log_path.unlink()

    def checkpoint(epoch: int, step: int) -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "compressor": compressor.state_dict() if compressor is not None else None,
            "rng": torch.get_rng_state(), "epoch": epoch, "step": step, "records": records,
            "config": config or {}})

    steps_done = 0
    model.train()
    for epoch in range(start_epoch, epochs):
        first = start_step if epoch == start_epoch else 0
        sums = [0.0, 0.0, 0.0]  # loss·n, correct, n
        t0 = time.time()
        bar = None
        if progress and main:
            from tqdm import tqdm
            bar = tqdm(total=len(loader), initial=first, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for step, (x, y) in enumerate(loader.batches(epoch, first), start=first):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            outputs = model(x)
            loss = criterion(x, outputs, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if compressor is not None:
                compressor.step()
            logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
            sums[0] += loss.item() * len(y)
            sums[1] += (logits.argmax(1) == y).sum().item()
            sums[2] += len(y)
            steps_done += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            last_of_epoch = step + 1 == len(loader)
            if stop_after is not None and steps_done >= stop_after:
                checkpoint(epoch + 1 if last_of_epoch else epoch, 0 if last_of_epoch else step + 1)
                if bar is not None:
                    bar.close()
                return records
            if not last_of_epoch and (step + 1) % checkpoint_every == 0:
                checkpoint(epoch, step + 1)
        if bar is not None:
            bar.close()
        loss_sum, correct, n = _all_sum(sums, device)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(n, 1), "train_acc": 100.0 * correct / max(n, 1),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}
        if eval_loader is not None:
            record["acc"] = evaluate(model, eval_loader, device)
        if compressor is not None:
            record.update(compressor.solver.stats())
        records.append(record)
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
            print(f"{desc} epoch {epoch + 1}/{epochs}: {summary}", flush=True)
        checkpoint(epoch + 1, 0)
    return records

"""The training loop both stages share: progress bars, a JSONL log, complete checkpoints,
exact resume, and DistributedDataParallel (only rank 0 writes)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["fit", "evaluate", "unwrap", "is_main_process", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

# The layout `fit` writes; a checkpoint without this tag (an older uvc's) is refused on resume.
CHECKPOINT_FORMAT = "uvc.checkpoint/1"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "compressor", "rng", "epoch", "step", "records", "sums",
                   "epoch_seconds", "config")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return _rank() == 0


def _all_gather(values: list[float], device) -> list[list[float]]:
    """Every rank's ``values``, in rank order (a collective: all ranks call it)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world() == 1:
        return [t.tolist()]
    parts = [torch.empty_like(t) for _ in range(_world())]
    dist.all_gather(parts, t)
    return [part.tolist() for part in parts]


def _json_form(value):
    """``value`` as JSON reads it back (tuples become lists), so saved and current settings compare equal."""
    return json.loads(json.dumps(value))


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


def load_checkpoint(path: Path, device, config: dict | None = None, match: Sequence[str] = ()) -> dict:
    """Reads a checkpoint written by `fit` and checks it fits this run before anything uses it:
    the ``match`` keys of its saved settings must equal those of ``config`` (None and absent
    alike), and it must come from as many processes as this run has. Raises
    FileNotFoundError, or ValueError naming the file and what is wrong; reads only."""
    name = f"checkpoint.pt at {path}"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # unpickling a damaged file can fail with almost any error type
        raise ValueError(f"{name} is truncated or not a torch file: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{name} holds a {type(state).__name__}, not a checkpoint written by uvc")
    found = state.get("format")
    if found != CHECKPOINT_FORMAT:
        raise ValueError(f"{name} has format {found!r}, expected {CHECKPOINT_FORMAT!r} (written by an older uvc "
                         "or another program); run without --resume, or into another output folder")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{name} lacks {missing}; it is not a complete uvc checkpoint")
    saved, current = state["config"], config or {}
    for key in match:
        if _json_form(saved.get(key)) != _json_form(current.get(key)):
            raise ValueError(f"{name} was written by a run with {key}={saved.get(key)!r}, this run has "
                             f"{key}={current.get(key)!r}; resume with the same {key}, or run without --resume "
                             "into another output folder")
    if len(state["sums"]) != _world():
        raise ValueError(f"{name} was written by {len(state['sums'])} processes, this run has {_world()}; "
                         "resume with as many")
    return state


def fit(model: nn.Module, loader, *, epochs: int, optimizer: torch.optim.Optimizer,
        scheduler, criterion: Callable, out_dir: str | os.PathLike, compressor=None,
        eval_loader=None, resume: bool = False, checkpoint_every: int = 100, stop_after: int | None = None,
        desc: str = "train", config: dict | None = None, match: Sequence[str] = (),
        progress: bool = True, on_start: Callable[[], None] | None = None) -> list[dict]:
    """Trains ``model`` for ``epochs`` epochs of ``loader.batches(epoch)``.

    Per step: ``loss = criterion(x, model(x), y)``, backward, optimizer and scheduler step,
    then ``compressor.step()`` when given. Writes ``checkpoint.pt`` (model, optimizer,
    scheduler, compressor, RNG, position, and every rank's running sums of the epoch) every
    ``checkpoint_every`` steps and at each epoch end, and one JSON line per epoch to
    ``log.jsonl``. With ``resume`` it continues from ``checkpoint.pt`` exactly where it
    stopped: weights, solver and log lines equal an uninterrupted run's (``seconds``, the
    epoch's wall time in s, aside). ``config``: the run's settings, saved with each checkpoint;
    ``match``: the keys of ``config`` a checkpoint must share to be resumed (the model, the
    budget). ``stop_after``: return after this many optimizer steps of this call (after
    writing a checkpoint, and the epoch's log line when it is the epoch's last step), as if
    killed there. ``on_start``: called on the main process once the run is known to start (after
    a resumed checkpoint passed its checks), e.g. to write the run's settings. Returns the epoch
    records.
    """
    out = Path(out_dir)
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    device = next(model.parameters()).device
    start_epoch, start_step, records = 0, 0, []
    start_sums, start_seconds = [0.0, 0.0, 0.0], 0.0
    if resume:
        state = load_checkpoint(ckpt_path, device, config, match)
        name = f"checkpoint.pt at {ckpt_path}"
        try:
            unwrap(model).load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"{name} holds the weights of another model: {e}") from None
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if compressor is not None:
                compressor.load_state_dict(state["compressor"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{name} does not fit this run's optimizer, schedule or compressor: {e}") from None
        torch.set_rng_state(state["rng"].cpu())
        start_epoch, start_step, records = state["epoch"], state["step"], state["records"]
        start_sums, start_seconds = state["sums"][_rank()], state["epoch_seconds"]
        if main:
            # The checkpoint's records: lines a killed run appended after it come again as the steps are redone.
            tmp = log_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, log_path)
    elif main and log_path.exists():
        log_path.unlink()
    if main and on_start is not None:
        on_start()

    def checkpoint(epoch: int, step: int, sums: list[float], seconds: float) -> None:
        # Per rank: the sums are reduced only at the epoch end, so a resumed rank must go on from its own.
        all_sums = _all_gather(sums, device)
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "compressor": compressor.state_dict() if compressor is not None else None,
            "rng": torch.get_rng_state(), "epoch": epoch, "step": step, "records": records,
            "sums": all_sums, "epoch_seconds": seconds, "config": config or {}})

    try:
        steps_done = 0
        model.train()
        for epoch in range(start_epoch, epochs):
            first = start_step if epoch == start_epoch else 0
            sums = list(start_sums) if epoch == start_epoch else [0.0, 0.0, 0.0]  # loss·n, correct, n
            t0 = time.time() - (start_seconds if epoch == start_epoch else 0.0)
            stop = False
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
                stop = stop_after is not None and steps_done >= stop_after
                if stop and not last_of_epoch:
                    checkpoint(epoch, step + 1, sums, time.time() - t0)
                    if bar is not None:
                        bar.close()
                    return records
                if not last_of_epoch and (step + 1) % checkpoint_every == 0:
                    checkpoint(epoch, step + 1, sums, time.time() - t0)
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
            checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0], 0.0)
            if stop:  # on the epoch's last step: after its record and checkpoint
                return records
        return records
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        raise RuntimeError(
            f"{desc}: rank {_rank()} of {_world()} lost contact with another rank, which stopped or "
            f"died ({str(e).splitlines()[0][:300]}). This rank stops too. The last checkpoint is {ckpt_path}: "
            "run the same command again with --resume to continue from it.") from e


def _lost_peer(e: RuntimeError) -> bool:
    """Whether ``e`` is a collective that failed because another rank went away (gloo reports a
    reset or closed connection; NCCL a `DistBackendError` or a timeout)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(e, getattr(dist, "DistBackendError", ())) or isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e)
    return any(s in text for s in ("Connection reset", "Connection closed", "Broken pipe", "Timed out", "NCCL"))

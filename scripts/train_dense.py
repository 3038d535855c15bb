"""Trains the dense starting points shipped in ``python/uvc/assets``: small timm ViTs on
Fashion-MNIST, run until test accuracy plateaus.

    python scripts/train_dense.py --model demo --epochs 40
    python scripts/train_dense.py --model deep --epochs 40

Models:
  demo: width 64, 6 blocks, 4 heads, MLP 256, patch 4 on 28x28 (16.7 M MACs); `uvc demo` starts here.
  deep: width 48, 12 blocks, 3 heads, MLP 192, patch 4 on 28x28 (about 20 M MACs), where block
        skipping matters.

Recipe: AdamW, cosine learning rate over ``--epochs`` after half an epoch of warm-up, label
smoothing 0.1, random 2-pixel shifts and horizontal flips. After each epoch the script evaluates
on all 10 000 test images, appends the epoch to ``<name>.log.jsonl`` and writes the weights,
their description and a complete checkpoint (model, optimizer, schedule, generator states), so a
killed run resumes exactly (``--resume``). The run counts as converged when the last 5 epochs
gained less than ``--plateau`` points (best of the last 5 minus best before them); the JSON says
whether it did, and the script says so loudly when not. Every random choice flows from ``--seed``.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from uvc.data import load_fashion_mnist

MEAN, STD = 0.2860, 0.3530
MODELS = {
    "demo": ("fmnist_vit", dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6,
                                num_heads=4, mlp_ratio=4.0, class_token=True, global_pool="token")),
    "deep": ("fmnist_vit_deep", dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=12,
                                     num_heads=3, mlp_ratio=4.0, class_token=True, global_pool="token")),
}
PLATEAU_WINDOW = 5


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts and horizontal flips."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2, n), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def plateau_gain(curve: list[float], window: int = PLATEAU_WINDOW) -> float | None:
    """Points the last ``window`` epochs gained: best of them minus best before them
    (None while fewer than ``window + 1`` epochs exist)."""
    if len(curve) <= window:
        return None
    return max(curve[-window:]) - max(curve[:-window])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="demo")
    p.add_argument("--epochs", type=int, default=40, help="length of the cosine schedule")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--plateau", type=float, default=0.2, help="converged when the last 5 epochs gained less (points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="python/uvc/assets")
    p.add_argument("--work", default=None, help="where the resumable checkpoint goes (default: runs/dense_<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --work exactly")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, kwargs = MODELS[args.model]
    out, work = Path(args.out), Path(args.work or f"runs/dense_{args.model}")
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    xtr, ytr, xte, yte = to_tensor(xtr), torch.from_numpy(ytr), to_tensor(xte), torch.from_numpy(yte)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(xtr) // args.batch_size
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    curve, seconds, start_epoch = [], 0.0, 0
    ckpt_path = work / "checkpoint.pt"
    if args.resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["args"] != {k: v for k, v in vars(args).items() if k in RUN_KEYS}:
            raise SystemExit(f"--resume: {ckpt_path} was written with {ckpt['args']}, not these settings")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        curve, seconds, start_epoch = ckpt["curve"], ckpt["seconds"], ckpt["epoch"]
        print(f"resumed {ckpt_path} after epoch {start_epoch}")
    log = work / f"{name}.log.jsonl"
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10)
        loss_sum = 0.0
        for step in bar:
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            x = augment(xtr[idx], gen).to(device)
            loss = F.cross_entropy(model(x), ytr[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        acc = evaluate(model, xte.to(device), yte.to(device))
        curve.append(acc)
        seconds += time.time() - t0
        gain = plateau_gain(curve)
        record = {"epoch": epoch + 1, "test_accuracy": acc, "train_loss": loss_sum / steps_per_epoch,
                  "lr": sched.get_last_lr()[0], "seconds": round(seconds, 1), "gain_last_5": gain}
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {epoch + 1}: test accuracy {acc:.2f} %  (gain over the last 5 epochs: "
              f"{'-' if gain is None else f'{gain:.2f}'}; {seconds:.0f} s)", flush=True)
        save(model, out, name, kwargs, args, curve, seconds)
        tmp = work / "checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "curve": curve,
                    "seconds": seconds, "epoch": epoch + 1,
                    "args": {k: v for k, v in vars(args).items() if k in RUN_KEYS}}, tmp)
        tmp.replace(ckpt_path)
    gain = plateau_gain(curve)
    if gain is None or gain >= args.plateau:
        print(f"WARNING: not converged: the last {PLATEAU_WINDOW} epochs gained "
              f"{'n/a' if gain is None else f'{gain:.2f}'} points (asked: < {args.plateau}); train longer")


# The settings a resumed run must share with the run it continues.
RUN_KEYS = ("model", "epochs", "batch_size", "lr", "weight_decay", "seed")


def save(model, out: Path, name: str, kwargs: dict, args, curve: list[float], seconds: float) -> None:
    """Writes the weights and their description (atomically), so a killed run still leaves
    its last finished epoch behind."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{name}.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out / f"{name}.safetensors")
    gain = plateau_gain(curve)
    meta = {"timm_model": "vit_tiny_patch16_224", "kwargs": kwargs, "test_accuracy": curve[-1],
            "mean": MEAN, "std": STD, "epochs": len(curve), "seed": args.seed,
            "curve": curve, "gain_last_5": gain, "converged": gain is not None and gain < args.plateau,
            "train_seconds": round(seconds), "threads": torch.get_num_threads(),
            "trained_with": "python scripts/train_dense.py " + " ".join(
                f"--{k.replace('_', '-')} {getattr(args, k)}" for k in RUN_KEYS)}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()

"""Trains the embedded dense starting point of `uvc demo`: a small timm ViT on Fashion-MNIST.

    python scripts/train_dense.py --epochs 4 --out python/uvc/assets

Writes ``fmnist_vit.json`` (timm model name and keyword arguments, test accuracy) and
``fmnist_vit.safetensors`` (the state dict). Every random choice flows from ``--seed``.
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
MODEL_KWARGS = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6,
                    num_heads=4, mlp_ratio=4.0, class_token=True, global_pool="token")


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="python/uvc/assets")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    xtr, ytr, xte, yte = to_tensor(xtr), torch.from_numpy(ytr), to_tensor(xte), torch.from_numpy(yte)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **MODEL_KWARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(xtr) // args.batch_size
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}")
        for step in bar:
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}: test accuracy {acc:.2f} %  ({time.time() - start:.0f} s)", flush=True)
        save(model, Path(args.out), args, acc, epoch + 1)


def save(model, out: Path, args, acc: float, epochs_done: int) -> None:
    """Writes the weights and their description after every epoch (atomically), so a killed
    run still leaves its last finished epoch behind."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "fmnist_vit.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out / "fmnist_vit.safetensors")
    meta = {"timm_model": "vit_tiny_patch16_224", "kwargs": MODEL_KWARGS, "test_accuracy": acc,
            "mean": MEAN, "std": STD, "epochs": epochs_done, "seed": args.seed,
            "trained_with": "python scripts/train_dense.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    (out / "fmnist_vit.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()

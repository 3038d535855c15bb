#!/usr/bin/env python3
"""Fine-tune a timm ViT with AdamW on an ImageFolder (or Fashion-MNIST) — and compress it with uvc.

A plain torch / timm training script; the few lines that add uvc are marked ``# uvc:``. They
build a `uvc.torch.Compressor` on the model, call ``comp.step()`` after every
``optimizer.step()``, and at the end export the physically smaller model and save it (a folder
that `uvc.torch.load` rebuilds, and an ONNX file). Delete them and this trains the dense model.

    # your fine-tuned DeiT-S on your images (train/ and val/ class folders), to 50 % of its MACs
    python examples/train_timm_with_uvc.py --model deit_small_patch16_224 --checkpoint my_deit.pth \\
        --num-classes 10 --data my_images/ --epochs 30 --budget 0.5 --out runs/my_deit_uvc

    # a smoke run: the demo model that ships with uvc, a Fashion-MNIST subset, one short epoch
    python examples/train_timm_with_uvc.py --smoke

This is one stage (search and export, no distillation, no resume); `uvc compress` and
`uvc finetune` are the full two-stage pipeline with distillation, checkpoints and logs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import uvc                                                              # uvc: the cost model
from uvc.torch import Compressor, export_onnx, save                      # uvc: compressor, save, ONNX

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="a timm model name, or 'demo' (the small Fashion-MNIST ViT "
                                                   "that ships with uvc)")
    p.add_argument("--checkpoint", help="weights to start from (a torch state dict, optionally under 'model')")
    p.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (downloads)")
    p.add_argument("--num-classes", type=int, help="classes of the head (default: timm's)")
    p.add_argument("--img-size", type=int, help="input size (default: timm's)")
    p.add_argument("--data", default="fashion-mnist", help="an ImageFolder root with train/ and val/, or "
                                                           "'fashion-mnist'")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--train-images", type=int, help="use this many training images (a seeded subset)")
    p.add_argument("--val-images", type=int, help="use this many validation images (a seeded subset)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train_timm_with_uvc")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx")
    # uvc: the budget and the search schedule
    p.add_argument("--budget", type=float, default=0.5, help="uvc: fraction of the dense MACs to keep")
    p.add_argument("--warmup-epochs", type=float, default=5.0, help="uvc: epochs before the search starts")
    p.add_argument("--prune-rate", type=float, default=0.02,
                   help="uvc: largest change of a layer's kept fraction per step (the solver's lr_counts)")
    p.add_argument("--smoke", action="store_true", help="a quick check: the demo model, Fashion-MNIST, 768 "
                                                        "training and 256 validation images, one epoch")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.checkpoint, args.data = "demo", None, "fashion-mnist"
        args.train_images, args.val_images, args.epochs, args.batch_size = 768, 256, 1, 32
        args.workers, args.warmup_epochs, args.prune_rate = 0, 0.1, 0.05
    return args


def build_model(args) -> tuple[torch.nn.Module, tuple, tuple]:
    """The model, its input size (C, H, W) and normalisation (mean, std)."""
    if args.model == "demo":
        from uvc.torch.pipeline import load_model   # the shipped demo ViT (a timm VisionTransformer)
        model, meta = load_model("demo")
        stats = ((meta["mean"],), (meta["std"],))
    else:
        kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v is not None}
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
        if args.checkpoint:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state))
        cfg = model.pretrained_cfg or {}
        stats = (tuple(cfg.get("mean", IMAGENET_STATS[0])), tuple(cfg.get("std", IMAGENET_STATS[1])))
    size = model.patch_embed.img_size
    return model, (model.patch_embed.proj.in_channels, *size), stats


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files, resized and repeated to the model's input."""

    def __init__(self, split: str, shape: tuple, stats: tuple, train: bool, data_dir=None):
        from uvc.data import load_fashion_mnist   # a numpy reader of the IDX files (no download)
        self.images, self.labels = load_fashion_mnist(split, data_dir)
        self.shape, self.train = shape, train
        self.mean, self.std = float(np.mean(stats[0])), float(np.mean(stats[1]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).float().div(255.0)[None, None]
        if tuple(x.shape[-2:]) != tuple(self.shape[1:]):
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        x = ((x[0] - self.mean) / self.std).expand(self.shape[0], -1, -1)
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])


def build_data(args, shape: tuple, stats: tuple) -> tuple[DataLoader, DataLoader]:
    if args.data == "fashion-mnist":
        train_set = FashionMNIST("train", shape, stats, True, args.data_dir)
        val_set = FashionMNIST("test", shape, stats, False, args.data_dir)
    else:
        from torchvision import datasets, transforms
        size = shape[1:]
        norm = [transforms.ToTensor(), transforms.Normalize(*stats)]
        train_set = datasets.ImageFolder(Path(args.data) / "train", transforms.Compose(
            [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *norm]))
        val_set = datasets.ImageFolder(Path(args.data) / "val", transforms.Compose(
            [transforms.Resize(int(size[0] * 256 / 224)), transforms.CenterCrop(size), *norm]))
    rng = np.random.default_rng(args.seed)
    if args.train_images:
        train_set = torch.utils.data.Subset(train_set, rng.permutation(len(train_set))[:args.train_images].tolist())
    if args.val_images:
        val_set = torch.utils.data.Subset(val_set, rng.permutation(len(val_set))[:args.val_images].tolist())
    gen = torch.Generator().manual_seed(args.seed)
    train = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                       generator=gen)
    val = DataLoader(val_set, 256, shuffle=False, num_workers=args.workers)
    return train, val


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        total += len(y)
    return 100.0 * correct / total


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model, shape, stats = build_model(args)
    model.to(device)
    train, val = build_data(args, shape, stats)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    comp = Compressor(model, args.budget, steps_per_epoch=len(train), optimizer=optimizer,  # uvc: masks, gates,
                      seed=args.seed, warmup_epochs=args.warmup_epochs, lr_counts=args.prune_rate)  # the solver

    for epoch in range(args.epochs):
        model.train()
        start, total_loss = time.time(), 0.0
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            comp.step()                                       # uvc: one solver step per optimizer step
            scheduler.step()
            total_loss += loss.item()
        stats_now = comp.solver.stats()                       # uvc: where the search stands
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total_loss / len(train):.4f}  val top-1 "
              f"{accuracy(model, val, device):.2f} %  MACs {stats_now['plan_ratio']:.3f} of dense "  # uvc
              f"(budget {args.budget})  {time.time() - start:.0f} s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    slim = comp.export()                                      # uvc: the physically smaller model
    save(slim, out / "model", meta={"source": args.model, "mean": list(stats[0]), "std": list(stats[1])})  # uvc
    if args.onnx:
        export_onnx(slim, out / "model.onnx")                 # uvc: input "images", output "logits"
    dense_macs = uvc.count(slim.spec).macs                    # uvc: MACs of the dense and the slim model
    slim_macs = uvc.count(slim.spec, slim.plan).macs          # uvc
    summary = {"val_acc": accuracy(slim, val, device), "macs": slim_macs, "dense_macs": dense_macs,
               "macs_ratio": slim_macs / dense_macs, "params": sum(p.numel() for p in slim.parameters())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'model'}: {slim_macs / 1e6:.2f} M MACs ({summary['macs_ratio']:.1%} of "
          f"{dense_macs / 1e6:.2f} M), val top-1 {summary['val_acc']:.2f} %")
    return summary


if __name__ == "__main__":
    main()

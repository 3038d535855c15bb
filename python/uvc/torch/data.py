"""Reproducible batches for training and evaluation.

Every epoch's order and every batch's augmentation come from ``(seed, epoch, step)``, so a
resumed run sees exactly the batches the killed run would have seen. Under
DistributedDataParallel each rank takes a strided share of the same order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data import load_fashion_mnist

__all__ = ["ArrayLoader", "ImageFolderLoader", "make_loader", "FASHION_MNIST_STATS"]

FASHION_MNIST_STATS = (0.2860, 0.3530)


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def shift_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels and horizontal flips of a (batch, C, H, W) tensor."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class ArrayLoader:
    """Batches from in-memory uint8 images (N, H, W) or (N, C, H, W) and int labels.

    Images are scaled to [0, 1], normalised by ``mean``/``std``, resized to ``image_size``
    and repeated to ``in_chans`` channels when the model expects other than the data has.
    ``train`` shuffles per epoch, drops the last partial batch and augments.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, train: bool, seed: int = 0,
                 image_size: tuple[int, int] | None = None, in_chans: int | None = None,
                 mean: float = FASHION_MNIST_STATS[0], std: float = FASHION_MNIST_STATS[1],
                 rank: int = 0, world_size: int = 1):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ArrayLoader: batch_size must be a positive int, got {batch_size!r}")
        if len(images) != len(labels):
            raise ValueError(f"ArrayLoader: {len(images)} images but {len(labels)} labels")
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.images = x.unsqueeze(1) if x.ndim == 3 else x
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.image_size = tuple(image_size) if image_size is not None else tuple(self.images.shape[-2:])
        self.in_chans = in_chans or self.images.shape[1]
        self.mean, self.std = mean, std
        self.rank, self.world_size = rank, world_size
        per_rank = len(self.images) // world_size if train else -(-len(self.images) // world_size)
        self._per_rank = per_rank
        if train and per_rank < batch_size:
            raise ValueError(f"ArrayLoader: {len(self.images)} training images cannot fill one batch of "
                             f"{batch_size} per rank on {world_size} rank(s)")

    def __len__(self) -> int:
        return self._per_rank // self.batch_size if self.train else -(-self._per_rank // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        order = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.train else torch.arange(n)
        return order[self.rank::self.world_size][: self._per_rank]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise ValueError(f"ArrayLoader: cannot map {x.shape[1]} image channels to {self.in_chans}")
            x = x.expand(-1, self.in_chans, -1, -1)
        return x

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch ``start`` on (resume)."""
        order = self._order(epoch)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = shift_flip(x.float(), _generator(self.seed, epoch, step, 1))
            yield self.prepare(x), self.labels[idx]


class ImageFolderLoader(ArrayLoader):
    """A folder of class sub-folders (torchvision ImageFolder layout), decoded on the fly."""

    def __init__(self, root: str | os.PathLike, batch_size: int, *, train: bool, seed: int = 0,
                 image_size: tuple[int, int] = (224, 224), in_chans: int = 3,
                 mean: tuple = (0.485, 0.456, 0.406), std: tuple = (0.229, 0.224, 0.225),
                 rank: int = 0, world_size: int = 1, num_workers: int = 2):
        from torchvision import datasets, transforms
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolderLoader: {root} is not a folder of class sub-folders")
        aug = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()] if train else [
            transforms.Resize(int(image_size[0] * 256 / 224)), transforms.CenterCrop(image_size)]
        self.dataset = datasets.ImageFolder(str(root), transforms.Compose(
            aug + [transforms.ToTensor(), transforms.Normalize(mean, std)]))
        self.num_workers = num_workers
        n = len(self.dataset)
        super().__init__(np.zeros((n, 1, 1), np.uint8), np.array(self.dataset.targets), batch_size, train=train,
                         seed=seed, image_size=image_size, in_chans=in_chans, rank=rank, world_size=world_size)

    def batches(self, epoch: int = 0, start: int = 0):
        torch.manual_seed(int(_generator(self.seed, epoch, start, 2).initial_seed()))
        order = self._order(epoch)[start * self.batch_size:].tolist()
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=order,
                                             num_workers=self.num_workers, drop_last=self.train)
        yield from loader


def make_loader(data: str, split: str, batch_size: int, *, seed: int = 0, subset: int | None = None,
                image_size=None, in_chans=None, rank: int = 0, world_size: int = 1, data_dir=None) -> ArrayLoader:
    """``data``: "fashion-mnist" (the Debian package, or ``data_dir``) or an ImageFolder path
    (with ``train``/``val`` sub-folders). ``subset``: use the first n images of a seeded
    shuffle of the split (quick runs)."""
    train = split == "train"
    if data == "fashion-mnist":
        images, labels = load_fashion_mnist(split, data_dir)
        if subset is not None:
            keep = np.random.default_rng([seed, 0 if train else 1]).permutation(len(images))[:subset]
            images, labels = images[np.sort(keep)], labels[np.sort(keep)]
        return ArrayLoader(images, labels, batch_size, train=train, seed=seed, image_size=image_size,
                           in_chans=in_chans, rank=rank, world_size=world_size)
    folder = Path(data) / ("train" if train else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {data!r}: expected 'fashion-mnist' or a folder with train/ and val/ "
                                f"ImageFolder sub-folders; {folder} does not exist")
    return ImageFolderLoader(folder, batch_size, train=train, seed=seed, image_size=image_size or (224, 224),
                             in_chans=in_chans or 3, rank=rank, world_size=world_size)

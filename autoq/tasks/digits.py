"""Top-1 accuracy on scikit-learn's 8x8 digits, on a held-out split.

Data: `sklearn.datasets.load_digits` (1,797 images, values 0..16, 10 classes),
bundled with scikit-learn, so nothing is downloaded and `--data` is not used. The
images are shuffled once by the YAML's `seed` and cut into three disjoint splits
(`split_indices`): report (the test split), search, and train (for
scripts/train_digits_vit.py). The task scores the search split; `limit` keeps its
first N images. Each image is scaled to 0..255, made RGB and put through the
model's own eval transform, as CIFAR-100's are (scoring, calibration and the loss
are cifar100's).
"""

from __future__ import annotations

import random
from typing import NamedTuple

from PIL import Image

from ..errors import UserError
from . import cifar100, register

SPLITS = ("train", "search", "report")


class Digits(NamedTuple):
    images: list        # transformed image tensors
    labels: list[int]
    split: str          # which split they come from
    seed: int
    of: int             # images in the whole data set


def split_indices(n: int, seed: int) -> dict[str, list[int]]:
    """Three disjoint sorted index lists covering range(n): a shuffle by `seed`, then
    the first n // 5 are the report split, the next n // 5 the search split, the rest
    the train split."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = n // 5
    return {"train": sorted(order[2 * k:]), "search": sorted(order[k:2 * k]),
            "report": sorted(order[:k])}


def read(split: str, transform, seed: int) -> Digits:
    """One split of the digits, each image through `transform` (a PIL image -> tensor)."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise UserError(f"digits split {split!r}: use one of {', '.join(SPLITS)}.")
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype("uint8")
    idx = split_indices(len(pixels), seed)[split]
    images = [transform(Image.fromarray(pixels[i], "L").convert("RGB")) for i in idx]
    return Digits(images, [int(digits.target[i]) for i in idx], split, seed, len(pixels))


def load(task, loaded, data, seq_len, limit, split: str = "search") -> Digits:
    if data is not None:
        raise UserError(f"--data {data}: the digits task reads the digits bundled with "
                        "scikit-learn and takes no --data; leave it out.")
    d = read(split, loaded.transform, int(task.spec["seed"]))
    n = len(d.labels) if limit is None else min(limit, len(d.labels))
    if n == 0:
        raise UserError("no images to evaluate; check --limit.")
    return d._replace(images=d.images[:n], labels=d.labels[:n])


def describe(d: Digits) -> str:
    return (f"digits {d.split} split, {len(d.labels)} images (of {d.of}, split seed "
            f"{d.seed}), top-1")


register("digits", load=load, units=lambda loaded, d: cifar100.units(loaded, d[:2]),
         count=lambda d: len(d.labels),
         take=lambda d, idx: d._replace(images=[d.images[i] for i in idx],
                                        labels=[d.labels[i] for i in idx]),
         describe=describe, calibration=lambda d, n: cifar100.calibration(d[:2], n),
         loss=cifar100.loss, names=lambda task, data: [str(i) for i in range(10)])

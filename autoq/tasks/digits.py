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

from PIL import Image

from ..errors import UserError
from . import cifar100, register

SPLITS = ("train", "search", "report")


def split_indices(n: int, seed: int) -> dict[str, list[int]]:
    """Three disjoint sorted index lists covering range(n): a shuffle by `seed`, then
    the first n // 5 are the report split, the next n // 5 the search split, the rest
    the train split."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = n // 5
    return {"train": sorted(order[2 * k:]), "search": sorted(order[k:2 * k]),
            "report": sorted(order[:k])}


def pixels() -> tuple:
    """The digits as 0..255 grey images and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images * (255 / 16)).round().astype("uint8"), digits.target


def load(task, loaded, data, seq_len, limit, split: str = "search") -> cifar100.Images:
    if data is not None:
        raise UserError(f"--data {data}: the digits task reads the digits bundled with "
                        "scikit-learn and takes no --data; leave it out.")
    if split not in SPLITS:
        raise UserError(f"digits split {split!r}: use one of {', '.join(SPLITS)}.")
    grey, labels = pixels()
    seed = int(task.spec["seed"])
    index = split_indices(len(grey), seed)[split]
    rgb = {i: Image.fromarray(grey[i], "L").convert("RGB") for i in index}
    label = f"{split} split, {len(index)} images (of {len(grey)}, split seed {seed})"
    return cifar100.images_of(loaded, rgb, labels, index, limit, label)


register("digits", load=load, outputs=cifar100.outputs, value=cifar100.hit, count=len,
         take=cifar100.take, describe=lambda d: f"digits {d.label}, top-1",
         calibration=cifar100.calibration, loss=cifar100.loss,
         names=lambda task, data: [str(i) for i in range(10)])

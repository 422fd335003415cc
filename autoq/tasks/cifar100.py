"""CIFAR-100 top-1 accuracy (and KL from the fp model), with the model's own eval
transform.

Data: the hub's test split, or `--data DIR` in the original `cifar-100-python`
pickle format (a `test` file: dict with b"data" uint8 N x 3072 CHW and
b"fine_labels"). Splits: the test images are shuffled once by the YAML's `seed` and
halved (`halves`): the search split is the first half, the report split the other
(`--report-data DIR` reads the report half of that folder instead). `limit` keeps
the first N images of the split. Helpers here serve every image task.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..progress import track
from . import check_data_path, register


def read_pickle(folder) -> tuple[np.ndarray, list[int]]:
    """(N, 32, 32, 3) uint8 images and fine labels from a cifar-100-python folder."""
    path = folder / "test"
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(x) for x in d[b"fine_labels"]]
    except FileNotFoundError:
        raise UserError(f"--data {folder}: no `test` file in it; give the cifar-100-python folder.")
    except Exception as e:
        raise UserError(f"--data {folder}: {path} is not a CIFAR-100 pickle "
                        f"({e.__class__.__name__}); give the original cifar-100-python folder.")
    if len(labels) != len(data):
        raise UserError(f"--data {folder}: {len(data)} images but {len(labels)} labels.")
    return data.transpose(0, 2, 3, 1), labels


def names(task, data) -> list[str] | None:
    """The 100 fine label names from the `meta` file of a cifar-100-python folder."""
    try:
        with open(Path(data) / "meta", "rb") as f:
            return [n.decode() for n in pickle.load(f, encoding="bytes")[b"fine_label_names"]]
    except Exception:  # no --data, no meta file, or another layout: no names
        return None


def read_hub(task) -> tuple[list, list[int]]:
    hub = task.spec["hub"]
    try:
        import datasets

        rows = datasets.load_dataset(hub["path"], split=hub["split"])
    except Exception as e:
        raise UserError(f"could not get {hub['path']} from the hub ({e.__class__.__name__}); "
                        "offline, pass --data DIR with the cifar-100-python folder.")
    return rows[hub["image"]], list(rows[hub["label"]])


@dataclass(frozen=True)
class Images:
    images: list           # transformed image tensors
    labels: list[int]
    index: list[int]       # each image's position in the source data (a unit's id)
    label: str             # the split, in words, for the protocol

    def __len__(self) -> int:
        return len(self.labels)


def halves(n: int, seed: int) -> dict[str, list[int]]:
    """The search and report splits of n images: a shuffle by `seed`, halved."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return {"search": sorted(order[:n // 2]), "report": sorted(order[n // 2:])}


def images_of(loaded, images, labels, index: list[int], limit: int | None,
              label: str) -> Images:
    """The first `limit` of `index` through the model's own transform."""
    index = index if limit is None else index[:limit]
    if not index:
        raise UserError("no images to evaluate; check --data and --limit.")
    pil = [images[i] if isinstance(images[i], Image.Image) else Image.fromarray(images[i])
           for i in index]
    return Images([loaded.transform(im.convert("RGB")) for im in pil],
                  [int(labels[i]) for i in index], list(index), label)


def load(task, loaded, data, seq_len, limit, split: str = "search") -> Images:
    folder = check_data_path(data, want_dir=True)
    images, labels = read_pickle(folder) if folder else read_hub(task)
    seed = int(task.spec["seed"])
    index = halves(len(labels), seed)[split]
    label = f"{split} split ({len(index)} of {len(labels)} test images, seed {seed})"
    return images_of(loaded, images, labels, index, limit, label)


@torch.inference_mode()
def outputs(loaded, d: Images) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: its logits (1, classes) and its label, in batches of 64."""
    bs = 64
    for s in track(range(0, len(d), bs), "top-1", total=-(-len(d) // bs)):
        x = torch.stack(d.images[s:s + bs]).to(loaded.device, loaded.dtype)
        logits = loaded.model(x)
        for i, label in enumerate(d.labels[s:s + bs]):
            yield logits[i:i + 1], torch.tensor([label])


def hit(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float(logits.argmax(-1).cpu() == target)


def calibration(d: Images, n: int) -> list:
    """`n` batches of 8 images from the first ones."""
    k = min(len(d), n * 8)
    return [(torch.stack(d.images[i:i + 8]), torch.tensor(d.labels[i:i + 8]))
            for i in range(0, k, 8)]


def take(d: Images, idx) -> Images:
    return replace(d, images=[d.images[i] for i in idx], labels=[d.labels[i] for i in idx],
                   index=[d.index[i] for i in idx])


def loss(loaded, batch) -> torch.Tensor:
    x, y = batch
    logits = loaded.model(x.to(loaded.device, loaded.dtype)).float()
    return torch.nn.functional.cross_entropy(logits, y.to(loaded.device))


register("cifar100", load=load, outputs=outputs, value=hit, count=len, take=take,
         describe=lambda d: f"cifar100 {d.label}, top-1", calibration=calibration, loss=loss,
         names=names)

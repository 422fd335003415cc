"""CIFAR-100 top-1 accuracy, with the model's own eval transform.

Data: the hub's test split, or `--data DIR` in the original `cifar-100-python`
pickle format (a `test` file: dict with b"data" uint8 N x 3072 CHW and
b"fine_labels"). `limit` keeps the first N images.
"""

from __future__ import annotations

import pickle
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


def load(task, loaded, data, seq_len, limit) -> tuple[list, list[int]]:
    folder = check_data_path(data, want_dir=True)
    images, labels = read_pickle(folder) if folder else read_hub(task)
    n = len(labels) if limit is None else min(limit, len(labels))
    if n == 0:
        raise UserError("no images to evaluate; check --data and --limit.")
    pil = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images[:n]]
    return [loaded.transform(im.convert("RGB")) for im in pil], labels[:n]


@torch.inference_mode()
def units(loaded, dataset) -> Iterator[float]:
    images, labels = dataset
    bs = 64
    for s in track(range(0, len(labels), bs), "top-1", total=-(-len(labels) // bs)):
        x = torch.stack(images[s:s + bs]).to(loaded.device, loaded.dtype)
        pred = loaded.model(x).argmax(-1).cpu()
        yield from (pred == torch.tensor(labels[s:s + bs])).float().tolist()


def calibration(dataset, n: int) -> list:
    """`n` batches of 8 images from the first ones."""
    images, labels = dataset
    k = min(len(labels), n * 8)
    return [(torch.stack(images[i:i + 8]), torch.tensor(labels[i:i + 8])) for i in range(0, k, 8)]


def loss(loaded, batch) -> torch.Tensor:
    x, y = batch
    logits = loaded.model(x.to(loaded.device, loaded.dtype)).float()
    return torch.nn.functional.cross_entropy(logits, y.to(loaded.device))


register("cifar100", load=load, units=units, count=lambda dataset: len(dataset[1]),
         take=lambda dataset, idx: ([dataset[0][i] for i in idx], [dataset[1][i] for i in idx]),
         describe=lambda dataset: f"cifar100 test, {len(dataset[1])} images, top-1",
         calibration=calibration, loss=loss, names=names)

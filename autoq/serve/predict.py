"""Top-k classes of images, from a loaded image classifier.

Each image is opened with PIL, made RGB and put through the model's own eval
transform (as the tasks do); the softmax of the logits gives the probabilities.
Classes are named by the folder's `class_names` (stored by `autoq apply` when the
task knows them: digits "0".."9", CIFAR-100's `meta` file), else "class N".
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


def read_image(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not an image PIL can read ({e.__class__.__name__}); give a "
                        "PNG, JPEG or another image file.")


def class_name(loaded, index: int) -> str:
    names = loaded.class_names
    return names[index] if names and index < len(names) else f"class {index}"


@torch.inference_mode()
def predict(loaded, images: list[str | Path], top: int = 5) -> list[dict]:
    """For each image: {"image", "top": [{"class", "name", "probability"}, ...]}."""
    out = []
    for path in images:
        x = loaded.transform(read_image(path)).unsqueeze(0).to(loaded.device, loaded.dtype)
        probs = loaded.model(x).float().softmax(-1)[0].cpu()
        p, idx = probs.topk(min(top, probs.numel()))
        out.append({"image": str(path),
                    "top": [{"class": int(i), "name": class_name(loaded, int(i)),
                             "probability": float(v)} for v, i in zip(p, idx)]})
    return out

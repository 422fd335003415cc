"""Train `digits-vit` (autoq/models/vit.py: DIGITS_VIT, DIGITS_KWARGS) on the digits
train split and write its state dict (the checkpoint autoq ships).

The images go through exactly what the `digits` task scores with: the split of
autoq/tasks/digits.py (seed from eval/digits.yaml) and the model's own eval
transform; training adds random shifts of up to one source pixel. Seeded;
deterministic algorithms on, a fixed thread count (CPU float sums depend on it).
Reports the accuracy on the search and the report (test) splits.

    python scripts/train_digits_vit.py [--epochs 40] [--out autoq/models/weights/digits-vit.pt]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from autoq.models.kinds import KINDS
from autoq.models.vit import DIGITS_KWARGS, DIGITS_VIT, DIGITS_WEIGHTS
from autoq.tasks import get_task

from autoq.tasks import digits


def shifted(x: torch.Tensor, g: torch.Generator, pixels: int) -> torch.Tensor:
    """Each image rolled by -pixels..pixels in both directions (the digits have blank
    borders, so rolling is shifting)."""
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(torch.randint(-pixels, pixels + 1, (len(x), 2), generator=g)):
        out[i] = x[i].roll((int(dy), int(dx)), dims=(1, 2))
    return out


@torch.inference_mode()
def accuracy(model, d) -> float:
    model.eval()
    pred = model(torch.stack(d.images)).argmax(-1)
    return (pred == torch.tensor(d.labels)).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    ap.add_argument("--report", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args()

    import timm

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    model = timm.create_model(DIGITS_VIT, pretrained=False, **DIGITS_KWARGS)
    task, stand_in = get_task("digits"), SimpleNamespace(transform=KINDS["vit"].transform(model))
    train, search, report = (digits.load(task, stand_in, None, None, None, s)
                             for s in ("train", "search", "report"))
    x, y = torch.stack(train.images), torch.tensor(train.labels)
    shift = DIGITS_KWARGS["img_size"] // 8  # one source pixel
    steps = args.epochs * math.ceil(len(y) / args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order, total = torch.randperm(len(y), generator=g), 0.0
        for s in range(0, len(y), args.batch):
            idx = order[s:s + args.batch]
            loss = torch.nn.functional.cross_entropy(model(shifted(x[idx], g, shift)), y[idx],
                                                     label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(y):.4f}, "
              f"search accuracy {accuracy(model, search):.4f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    result = {"model": DIGITS_VIT, "kwargs": DIGITS_KWARGS, "epochs": args.epochs,
              "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads,
              "train_images": len(y), "train_seconds": round(seconds, 1),
              "search_accuracy": accuracy(model, search),
              "report_accuracy": accuracy(model, report),
              "search_images": len(search.labels), "report_images": len(report.labels),
              "parameters": sum(p.numel() for p in model.parameters()),
              "checkpoint": args.out.name, "checkpoint_bytes": args.out.stat().st_size,
              "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "timm": timm.__version__}
    print(json.dumps(result, indent=2))
    if args.report:
        args.report.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

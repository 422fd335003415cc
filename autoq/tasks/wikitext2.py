"""WikiText-2 perplexity.

Protocol: the whole test text is tokenized once (the tokenizer's defaults), cut
into non-overlapping windows of `seq_len` tokens (a trailing partial window is
dropped), each window scored on its own (mean next-token NLL over its seq_len-1
predictions), and ppl = exp(mean over windows). `limit` keeps the first N windows.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..errors import UserError
from ..progress import track
from . import check_data_path, register


def read_text(task, data: str | None) -> str:
    path = check_data_path(data, want_dir=False)
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--data {data}: cannot read it as UTF-8 text ({e.__class__.__name__}).")
    hub = task.spec["hub"]
    try:
        import datasets

        rows = datasets.load_dataset(hub["path"], hub["name"], split=hub["split"])
    except Exception as e:
        raise UserError(f"could not get {hub['path']} {hub['name']} from the hub "
                        f"({e.__class__.__name__}); offline, pass --data wiki.test.raw "
                        "(the raw WikiText-2 test file).")
    return "\n".join(rows[hub["field"]])


def windows(ids: torch.Tensor, seq_len: int, limit: int | None) -> torch.Tensor:
    """(n_windows, seq_len) non-overlapping windows of a 1-D token tensor."""
    n = ids.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise UserError(f"the text has {ids.numel()} tokens, fewer than one window of "
                        f"--seq-len {seq_len}; lower --seq-len.")
    return ids[: n * seq_len].view(n, seq_len)


def load(task, loaded, data, seq_len, limit) -> torch.Tensor:
    seq_len = task.spec["seq_len"] if seq_len is None else seq_len
    text = read_text(task, data)
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    return windows(ids, seq_len, limit)


def loss(loaded, batch) -> torch.Tensor:
    """Mean next-token negative log-likelihood of a (1, seq_len) window."""
    x, y = batch
    logits = loaded.model(x.to(loaded.device)).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, y.to(loaded.device)[0, 1:])


@torch.inference_mode()
def units(loaded, wins: torch.Tensor) -> Iterator[float]:
    for i in track(range(len(wins)), "perplexity", total=len(wins)):
        w = wins[i][None]
        yield loss(loaded, (w, w)).item()


def describe(wins: torch.Tensor) -> str:
    return (f"wikitext2 test, {len(wins)} windows x {wins.shape[1]} tokens (non-overlapping), "
            "ppl=exp(mean NLL)")


register("wikitext2", load=load, units=units, count=len, take=lambda wins, idx: wins[list(idx)],
         describe=describe, calibration=lambda wins, n: [(w[None], w[None]) for w in wins[:n]],
         loss=loss)

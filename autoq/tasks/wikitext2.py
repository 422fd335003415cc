"""WikiText-2 perplexity (and KL from the fp model).

Splits: the search split is the validation split, the report split the test split
(from the hub; offline `--data` is the search split's raw file, `--report-data` the
report split's). Protocol: the whole text is tokenized once (the tokenizer's
defaults), cut into non-overlapping windows of `seq_len` tokens (a trailing partial
window is dropped), each window scored on its own (mean next-token NLL over its
seq_len-1 predictions), and ppl = exp(mean over windows). `limit` keeps the first N
windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import UserError
from ..progress import track
from . import check_data_path, register


@dataclass(frozen=True)
class Windows:
    ids: torch.Tensor      # (n, seq_len) token ids
    index: list[int]       # each window's position in the text (a unit's id)
    source: str            # the split's name, or the file it was read from

    def __len__(self) -> int:
        return len(self.index)


def read_text(task, data: str | None, split: str) -> tuple[str, str]:
    """(text, where it came from) of a split: `data` (a raw file), else the hub."""
    path = check_data_path(data, want_dir=False)
    if path is not None:
        try:
            return path.read_text(encoding="utf-8"), path.name
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--data {data}: cannot read it as UTF-8 text ({e.__class__.__name__}).")
    hub, name = task.spec["hub"], task.spec["splits"][split]
    flag = "--data" if split == "search" else "--report-data"
    try:
        import datasets

        rows = datasets.load_dataset(hub["path"], hub["name"], split=name)
    except Exception as e:
        raise UserError(f"could not get the {name} split of {hub['path']} {hub['name']} from "
                        f"the hub ({e.__class__.__name__}); offline, pass {flag} with its raw "
                        f"file (wiki.{name[:5]}.raw).")
    return "\n".join(rows[hub["field"]]), name


def windows(ids: torch.Tensor, seq_len: int, limit: int | None) -> torch.Tensor:
    """(n_windows, seq_len) non-overlapping windows of a 1-D token tensor."""
    n = ids.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise UserError(f"the text has {ids.numel()} tokens, fewer than one window of "
                        f"--seq-len {seq_len}; lower --seq-len.")
    return ids[: n * seq_len].view(n, seq_len)


def load(task, loaded, data, seq_len, limit, split: str = "search") -> Windows:
    seq_len = task.spec["seq_len"] if seq_len is None else seq_len
    text, source = read_text(task, data, split)
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    wins = windows(ids, seq_len, limit)
    return Windows(wins, list(range(len(wins))), source)


def loss(loaded, batch) -> torch.Tensor:
    """Mean next-token negative log-likelihood of a (1, seq_len) window."""
    x, y = batch
    logits = loaded.model(x.to(loaded.device)).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, y.to(loaded.device)[0, 1:])


@torch.inference_mode()
def outputs(loaded, wins: Windows) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per window: the next-token logits (seq_len - 1, vocab) and the targets."""
    for i in track(range(len(wins)), "perplexity", total=len(wins)):
        w = wins.ids[i].to(loaded.device)
        yield loaded.model(w[None]).logits[0, :-1], w[1:]


def nll(logits: torch.Tensor, target: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits.float(), target).item()


def describe(wins: Windows) -> str:
    return (f"wikitext2 {wins.source}, {len(wins)} windows x {wins.ids.shape[1]} tokens "
            "(non-overlapping), ppl=exp(mean NLL)")


def shorten(wins: Windows, tokens: int) -> Windows:
    return Windows(wins.ids[:, :tokens], wins.index, wins.source) \
        if tokens < wins.ids.shape[1] else wins


register("wikitext2", load=load, outputs=outputs, value=nll, count=len, shorten=shorten,
         take=lambda w, idx: Windows(w.ids[list(idx)], [w.index[i] for i in idx], w.source),
         describe=describe,
         calibration=lambda w, n: [(x[None], x[None]) for x in w.ids[:n]], loss=loss)

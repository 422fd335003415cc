"""Tasks: the CIFAR-100 pickle loader on the shared files, and the perplexity protocol
on a model whose probabilities are known, checked by hand."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autoq.errors import UserError
from autoq.models import LoadedModel, load_model
from autoq.models.kinds import KINDS
from autoq.tasks import get_task
from autoq.tasks.cifar100 import read_pickle
from autoq.tasks.wikitext2 import windows

SHARED_CIFAR = Path("/work/shared/data/cifar-100-python")


@pytest.mark.skipif(not (SHARED_CIFAR / "test").exists(), reason="shared CIFAR-100 files absent")
def test_cifar_pickle_loader_on_shared_files():
    images, labels = read_pickle(SHARED_CIFAR)
    with open(SHARED_CIFAR / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert images.shape == (916, 32, 32, 3) and images.dtype == np.uint8
    assert len(labels) == 916 and all(0 <= y < 100 for y in labels)
    assert labels[0] == raw[b"fine_labels"][0] and labels == list(raw[b"fine_labels"])
    row = raw[b"data"][0]  # 1024 red, then 1024 green, then 1024 blue values, row-major
    for channel in range(3):
        assert np.array_equal(images[0][:, :, channel].ravel(), row[channel * 1024:(channel + 1) * 1024])


def test_cifar_loader_uses_model_transform_and_limit(tiny_cifar_dir, tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", checkpoint=str(path))
    task = get_task("cifar100")
    d = task.load(loaded, str(tiny_cifar_dir), None, 5)
    images, labels = d.images, d.labels
    raw_images, raw_labels = read_pickle(tiny_cifar_dir)
    assert labels == [raw_labels[i] for i in d.index] and len(images) == 5
    assert images[0].shape == (3, 32, 32)  # the model's own eval transform, at its size
    from PIL import Image
    assert torch.equal(images[3], loaded.transform(Image.fromarray(raw_images[d.index[3]])))
    # top-1 is the fraction of argmax == label
    with torch.inference_mode():
        pred = loaded.model(torch.stack(images)).argmax(-1).tolist()
    hits = [u["accuracy"] for u in task.units(loaded, d)]   # one 1/0 per image
    assert hits == [float(p == y) for p, y in zip(pred, labels)]
    assert task.score(loaded, d) == {"accuracy": sum(hits) / 5}


def test_image_splits_are_fixed_seed_halves_of_the_test_images(tiny_cifar_dir,
                                                               tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", checkpoint=str(path))
    task = get_task("cifar100")
    search = task.load(loaded, str(tiny_cifar_dir), None, None, "search")
    report = task.load(loaded, str(tiny_cifar_dir), None, None, "report")
    assert sorted(search.index + report.index) == list(range(12))     # disjoint, all of them
    assert len(search) == len(report) == 6
    assert search.index == task.load(loaded, str(tiny_cifar_dir), None, None).index  # fixed
    assert "search split (6 of 12 test images, seed 0)" in task.protocol(search)


def test_cifar_bad_folder(tmp_path, tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", checkpoint=str(path))
    task = get_task("cifar100")
    with pytest.raises(UserError, match="no `test` file"):
        task.load(loaded, str(tmp_path), None, None)
    (tmp_path / "test").write_bytes(b"garbage")
    with pytest.raises(UserError, match="is not a CIFAR-100 pickle"):
        task.load(loaded, str(tmp_path), None, None)


# ---- perplexity, by hand -------------------------------------------------------------
# Vocabulary of 4 tokens. The fake model gives the successor (x + 1) % 4 of the current
# token probability 1/2 and each of the other three 1/6, so a "hit" costs log 2 nats and
# a "miss" log 6. Text "0 1 2 3 0 2 1 3 3 3 0 1 2" at seq_len 4 gives windows
#   [0 1 2 3]: hit hit hit      -> mean NLL log 2
#   [0 2 1 3]: miss miss miss   -> log 6
#   [3 3 0 1]: miss hit hit     -> (log 6 + 2 log 2) / 3
# and a dropped tail [2]. (Across windows 3 -> 0 would be a hit; it must not count.)
# ppl = exp(mean of the three) = (2^5 * 6^4)^(1/9); with --limit 2: exp((log 2 + log 6)/2).

TEXT = "0 1 2 3 0 2 1 3 3 3 0 1 2"
PPL_ALL = (2**5 * 6**4) ** (1 / 9)
PPL_TWO = math.sqrt(12)
PPL_ONE = 2.0


class SuccessorLM(torch.nn.Module):
    def forward(self, ids):
        probs = torch.full((*ids.shape, 4), 1 / 6)
        probs.scatter_(-1, ((ids + 1) % 4)[..., None], 0.5)
        return SimpleNamespace(logits=probs.log() + 7.0)  # logits up to a constant


class DigitTokenizer:
    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[int(w) for w in text.split()]]))


@pytest.fixture
def fake_lm():
    return LoadedModel("fake", KINDS["lm"], SuccessorLM(), torch.device("cpu"), torch.float32,
                       tokenizer=DigitTokenizer())


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(TEXT)
    return str(path)


def test_perplexity_by_hand(fake_lm, text_file):
    task = get_task("wikitext2")
    wins = task.load(fake_lm, text_file, 4, None)
    assert wins.ids.tolist() == [[0, 1, 2, 3], [0, 2, 1, 3], [3, 3, 0, 1]]  # tail dropped
    assert task.score(fake_lm, wins)["ppl"] == pytest.approx(PPL_ALL, rel=1e-6)
    nlls = [u["ppl"] for u in task.units(fake_lm, wins)]      # one mean NLL per window
    assert [task.metric_of(nlls[:k]) for k in (1, 2, 3)] == \
        pytest.approx([PPL_ONE, PPL_TWO, PPL_ALL], rel=1e-6)


def test_perplexity_limit(fake_lm, text_file):
    task = get_task("wikitext2")
    wins = task.load(fake_lm, text_file, 4, 2)
    assert wins.ids.tolist() == [[0, 1, 2, 3], [0, 2, 1, 3]]
    ppl = task.score(fake_lm, wins)["ppl"]
    assert ppl == pytest.approx(PPL_TWO, rel=1e-6)
    assert task.load(fake_lm, text_file, 4, 100).ids.shape == (3, 4)


def test_default_seq_len_is_2048(fake_lm, tmp_path):
    path = tmp_path / "long.raw"
    path.write_text(" ".join(str(i % 4) for i in range(2048 * 2 + 5)))
    assert get_task("wikitext2").load(fake_lm, str(path), None, None).ids.shape == (2, 2048)


def test_windows_are_non_overlapping():
    ids = torch.arange(23)
    w = windows(ids, 5, None)
    assert w.tolist() == [list(range(i, i + 5)) for i in range(0, 20, 5)]
    with pytest.raises(UserError, match="fewer than one window"):
        windows(torch.arange(3), 5, None)


def test_data_errors(fake_lm, tmp_path, text_file):
    task = get_task("wikitext2")
    with pytest.raises(UserError, match="--data .*: no such file"):
        task.load(fake_lm, str(tmp_path / "missing.raw"), 4, None)
    with pytest.raises(UserError, match="expected a file"):
        task.load(fake_lm, str(tmp_path), 4, None)
    for seq_len in (1, 0):  # 0 is refused, not taken for "the default"
        with pytest.raises(UserError, match=rf"--seq-len {seq_len} must be at least 2"):
            task.load(fake_lm, text_file, seq_len, None)
    for limit in (0, -1):   # -1 would drop the last window
        with pytest.raises(UserError, match=rf"--limit {limit} must be at least 1"):
            task.load(fake_lm, text_file, 4, limit)
    with pytest.raises(UserError, match="unknown task 'glue'"):
        get_task("glue")


# ---- KL divergence, by hand ------------------------------------------------------------
class FlatterLM(torch.nn.Module):
    """The successor with probability 0.4 instead of 1/2, each other token 0.2."""
    def forward(self, ids):
        probs = torch.full((*ids.shape, 4), 0.2)
        probs.scatter_(-1, ((ids + 1) % 4)[..., None], 0.4)
        return SimpleNamespace(logits=probs.log())


def test_kl_from_the_fp_model_by_hand(fake_lm, text_file):
    """Per token KL(fp || q) = 1/2 log(0.5/0.4) + 3 * 1/6 log((1/6)/0.2), the same at every
    position, so every window's mean and the task's kld are that number; the fp model
    against its own reference has KL 0."""
    task = get_task("wikitext2")
    wins = task.load(fake_lm, text_file, 4, None)
    reference: dict = {}
    fp = list(task.units(fake_lm, wins, capture=reference))
    assert sorted(reference) == wins.index and len(fp) == 3
    assert task.score(fake_lm, wins, reference)["kld"] == 0.0
    flat = LoadedModel("flat", KINDS["lm"], FlatterLM(), torch.device("cpu"), torch.float32,
                       tokenizer=fake_lm.tokenizer)
    want = 0.5 * math.log(0.5 / 0.4) + 0.5 * math.log((1 / 6) / 0.2)
    units = [u["kld"] for u in task.units(flat, wins, reference)]
    assert units == pytest.approx([want] * 3, rel=1e-5)
    assert task.score(flat, wins, reference)["kld"] == pytest.approx(want, rel=1e-5)


def test_top_k_kl_never_exceeds_the_exact_kl_and_equals_it_over_the_whole_support():
    from autoq.tasks import kld

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 50, generator=g) * 3, torch.randn(5, 50, generator=g) * 3
    exact = kld.exact(q, p)
    assert kld.kl(q, kld.top_k(p, 50)) == pytest.approx(exact, rel=1e-5)
    for k in (1, 5, 20):
        assert kld.kl(q, kld.top_k(p, k)) <= exact + 1e-6
    assert kld.kl(p, kld.top_k(p, 5)) == pytest.approx(0.0, abs=1e-6)

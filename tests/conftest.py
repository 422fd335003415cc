"""Shared fixtures: tiny random models and tiny data in the formats autoq reads.

Session-scoped so every test file reuses them:

- `tiny_llama_dir`: a folder with a 2-layer random LlamaForCausalLM (hidden 64, tied
  embeddings) and a small word-level tokenizer; load it with `--model hf:<dir>`.
- `tiny_bpe_llama_dir`: the same Llama with a byte-level BPE tokenizer (vocabulary 320,
  GPT-2 style, as GGUF wants) and a chat template.
- `tiny_vit_checkpoint`: `(spec, path)` of a 2-block random timm ViT for 32x32 images
  and its state dict; load it with `--model timm:<spec> --checkpoint <path>`.
- `tiny_text_file`: a raw text file whose words the tiny tokenizer knows (many windows).
- `tiny_cifar_dir`: a cifar-100-python-format folder with 12 random images.
Helpers `write_text(path, ...)` and `write_cifar(folder, ...)` build more of either.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ("the of and to in a is was for on as with by he at from his an were are which "
         "it that this be or had not but first one their its new after who they have her "
         "she two been other when there all during into school time may years more most "
         "only over city some world would where later up such used many can state about "
         "national out known university united then made = @ , . ( )").split()
LLAMA_VOCAB = 128  # tokenizer pads up to this many ids (specials + WORDS + unused)
VIT_SPEC = "vit_tiny_patch16_224?depth=2&img_size=32&patch_size=8&embed_dim=64&num_heads=2"


def write_text(path: str | Path, n_words: int = 4000, seed: int = 0) -> Path:
    """A raw text file of `n_words` words the tiny tokenizer knows, in lines."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    lines = [" ".join(words[i:i + 12]) for i in range(0, n_words, 12)]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_cifar(folder: str | Path, n: int = 12, seed: int = 0) -> Path:
    """A folder in the original cifar-100-python pickle format (meta + test)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test = {b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"batch_label": b"testing batch 1 of 1",
            b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    for name, obj in (("test", test), ("meta", meta)):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)
    return folder


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture
def one_thread():
    """A tiny model runs faster on one thread (and the CI has two cores for everything);
    use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>{% endif %}")


def tiny_bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_bpe_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_bpe_llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_bpe_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tmp_path_factory) -> tuple[str, Path]:
    import timm

    from autoq.models.vit import parse_timm_spec

    name, kwargs = parse_timm_spec(VIT_SPEC)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=100, **kwargs)
    with torch.no_grad():  # a random but not degenerate head and class token
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("tiny_vit") / "vit.pt"
    torch.save(model.state_dict(), path)
    return VIT_SPEC, path


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("text") / "wiki.test.raw")


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-100-python")

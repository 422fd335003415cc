"""`autoq generate` and `autoq predict` on saved folders (issue 12): the streamed text is
the model's own greedy continuation (chat template on by default, off by flag), the
speed is reported with the prefill apart; predict gives the top classes with the
folder's class names; a wrong folder or argument is one sentence before any load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import autoq
from autoq.cli import app
from autoq.plan import FORMAT

runner = CliRunner()


def invoke(*args, code=0):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    return r


def apply_folder(tmp_path: Path, spec: str, default: dict, *extra) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": FORMAT, "model": spec, "layers": {},
                                "default": default}))
    out = tmp_path / "model"
    invoke("apply", plan, "--out", out, "-q", *extra)
    return out


@pytest.fixture(scope="module")
def lm_folder(tiny_bpe_llama_dir, tmp_path_factory):
    return apply_folder(tmp_path_factory.mktemp("lm"), f"hf:{tiny_bpe_llama_dir}",
                        {"nbits": 4, "group_size": 32})


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return apply_folder(tmp_path_factory.mktemp("digits"), "digits-vit",
                        {"nbits": 8, "group_size": 64})


def greedy(folder, ids: torch.Tensor, n: int) -> list[int]:
    model, _ = autoq.load(folder)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_generate_streams_the_greedy_continuation_of_the_chat_prompt(lm_folder):
    r = invoke("generate", lm_folder, "--prompt", "the city of", "-n", 12)
    stats = r.stderr.strip().splitlines()[-1]
    assert "new tokens; prefill" in stats and \
        "tokens/s (greedy, torch-int4 bfloat16, static KV cache, eager, cpu;" in stats
    j = json.loads(invoke("generate", lm_folder, "--prompt", "the city of", "-n", 12,
                          "--json").stdout)
    assert j["chat_template"] is True and r.stdout.rstrip("\n") == j["text"]
    _, tok = autoq.load(lm_folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "the city of"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    want = greedy(lm_folder, ids, 12)
    assert j["prompt_tokens"] == ids.shape[1] and j["new_tokens"] == len(want)
    assert j["text"] == tok.decode(want, skip_special_tokens=True)
    assert j["prefill_s"] > 0 and j["decode_tokens_per_s"] > 0
    assert j["decode_s"] == pytest.approx((j["new_tokens"] - 1) / j["decode_tokens_per_s"])


def test_generate_without_the_chat_template_and_with_sampling(lm_folder):
    j = json.loads(invoke("generate", lm_folder, "--prompt", "the city of", "-n", 8,
                          "--no-chat-template", "--json").stdout)
    _, tok = autoq.load(lm_folder)
    ids = tok("the city of", return_tensors="pt").input_ids
    assert j["chat_template"] is False and j["prompt_tokens"] == ids.shape[1]
    assert j["text"] == tok.decode(greedy(lm_folder, ids, 8), skip_special_tokens=True)
    sampled = [json.loads(invoke("generate", lm_folder, "--prompt", "the", "-n", 8,
                                 "--temperature", 1.5, "--seed", seed, "--json").stdout)["text"]
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and "temperature 1.5" in json.loads(invoke(
        "generate", lm_folder, "--prompt", "the", "-n", 2, "--temperature", 1.5,
        "--json").stdout)["sampling"]


def test_every_decode_loop_gives_the_same_greedy_text(lm_folder):
    """The static-cache loop (the CPU default), its compiled step and transformers'
    generate decode the same tokens; the last line says which ran."""
    texts = {}
    for engine in ("static", "generate", "compiled"):
        r = invoke("generate", lm_folder, "--prompt", "the city of", "-n", 6, "--engine", engine,
                   "--json")
        j = json.loads(r.stdout)
        texts[engine] = j["text"]
        assert j["engine"].startswith({"static": "static KV cache, eager",
                                       "generate": "transformers generate",
                                       "compiled": "static KV cache, torch.compile"}[engine])
    assert texts["static"] == texts["generate"] == texts["compiled"]


def test_predict_names_the_digits(digits_folder, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    meta = json.loads((digits_folder / "autoq.json").read_text())
    assert meta["class_names"] == [str(i) for i in range(10)]
    digits = load_digits()
    paths = []
    for i in (0, 1, 2):
        pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray(pixels, "L").save(paths[-1])
    j = json.loads(invoke("predict", digits_folder, *paths, "--json").stdout)
    model, transform = autoq.load(digits_folder)
    for path, row in zip(paths, j["images"]):
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["name"] == str(t["class"]) for t in row["top"])
        x = transform(Image.open(path).convert("RGB"))[None]
        assert row["top"][0]["class"] == int(model(x).argmax())
    table = invoke("predict", digits_folder, paths[0], "--top", 2).stdout
    assert "1. " in table and "2. " in table and "3. " not in table


def test_predict_takes_cifar_names_from_the_meta_file(tiny_vit_checkpoint, tiny_cifar_dir,
                                                      tmp_path):
    from PIL import Image

    spec, ckpt = tiny_vit_checkpoint
    folder = apply_folder(tmp_path, f"timm:{spec}", {"nbits": 8, "group_size": 32},
                          "--checkpoint", ckpt, "--data", tiny_cifar_dir)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    top = json.loads(invoke("predict", folder, tmp_path / "red.png", "--json").stdout)[
        "images"][0]["top"]
    assert all(t["name"] == f"class{t['class']}" for t in top)  # conftest's meta names
    bare = apply_folder(tmp_path / "bare", f"timm:{spec}", {"nbits": 8, "group_size": 32},
                        "--checkpoint", ckpt)
    top = json.loads(invoke("predict", bare, tmp_path / "red.png", "--json").stdout)[
        "images"][0]["top"]
    assert all(t["name"] == f"class {t['class']}" for t in top)


@pytest.mark.parametrize("args,message", [
    (["generate", "{digits}", "--prompt", "x"], "error: {digits} holds an image classifier (ViT), "
     "not a causal language model; use `autoq predict {digits} IMAGE...`."),
    (["predict", "{lm}", "{lm}/config.json"], "error: {lm} holds a causal language model, not an "
     "image classifier (ViT); use `autoq generate {lm} --prompt TEXT`."),
    (["generate", "{tmp}/nope", "--prompt", "x"], "error: {tmp}/nope: no such folder; give the "
     "--out folder of `autoq apply`."),
    (["generate", "{tmp}", "--prompt", "x"], "error: {tmp}: not a folder written by `autoq apply` "
     "(autoq.json: FileNotFoundError); give the --out folder of apply."),
    (["generate", "{lm}", "--prompt", "x", "-n", "0"], "error: --max-new-tokens 0 must be at "
     "least 1 (tokens to generate)."),
    (["generate", "{lm}", "--prompt", "x", "--temperature", "-1"], "error: --temperature -1 must "
     "be 0 (greedy) or above."),
    (["generate", "{lm}", "--prompt", "x", "--top-p", "0"], "error: --top-p 0 must be in (0, 1]."),
    (["generate", "{lm}", "--prompt", "x", "--device", "tpu"], "error: --device 'tpu' is not "
     "auto, cpu, cuda or cuda:N."),
    (["predict", "{digits}", "{tmp}/nope.png"], "error: {tmp}/nope.png: no such image file."),
    (["predict", "{digits}", "{lm}/config.json", "--top", "0"], "error: --top 0 must be at least "
     "1 (classes per image)."),
    (["predict", "{digits}", "{lm}/config.json"], "error: {lm}/config.json: not an image PIL can "
     "read (UnidentifiedImageError); give a PNG, JPEG or another image file."),
    (["export", "{digits}"], "error: {digits} holds an image classifier (ViT), not a causal "
     "language model; use `autoq predict {digits} IMAGE...`."),
    (["export", "{lm}", "--out", "{lm}"], "error: --out {lm} is a folder; give a file path."),
    (["export", "{lm}", "--format", "onnx"], "error: --format 'onnx' is not one of gguf."),
])
def test_bad_arguments_are_one_sentence(lm_folder, digits_folder, tmp_path, args, message):
    where = {"lm": lm_folder, "digits": digits_folder, "tmp": tmp_path}
    start = time.perf_counter()
    r = invoke(*[a.format(**where) for a in args], code=2)
    assert r.stderr.strip().splitlines()[-1] == message.format(**where) and r.stdout == ""
    if "PIL" not in message:  # everything else is refused before the folder is loaded
        assert time.perf_counter() - start < 5 and "loading" not in r.stderr

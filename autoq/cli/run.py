"""The commands that run or convert a saved folder: `generate`, `predict`, `export`.

Like every command, each checks its arguments first (the folder's autoq.json,
numbers, paths: autoq/cli/args.py), then loads, calls the library and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import progress
from ..serve import ENGINES
from . import args
from .app import command, emit
from .options import OUTPUT, Backend, Device, Dtype, Json, Quiet, one_of

GENERATION = "Generation"
EXPORT_FORMATS = ("gguf",)
Folder = typer.Argument(..., metavar="DIR", help="A folder written by `autoq apply`.")


def _open(folder: Path, device: str, dtype: str, backend: str):
    from ..pipeline import open_folder
    from ..serve.backend import fallback_line

    progress.say(f"loading {folder}")
    loaded, serving = open_folder(folder, device, backend, dtype)
    if serving["fallback"]:
        progress.say(fallback_line(serving["fallback"]))
    return loaded, serving


@command
def generate(folder: Path = Folder,
             prompt: str = typer.Option(..., "--prompt", "-p", metavar="TEXT",
                                        rich_help_panel=GENERATION, help="What to continue."),
             max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", metavar="N",
                                                rich_help_panel=GENERATION,
                                                help="Stop after N new tokens (or at the end "
                                                "of the text)."),
             chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template",
                                                metavar="", rich_help_panel=GENERATION,
                                                help="Wrap the prompt as a user turn in the "
                                                "tokenizer's chat template, when it has one."),
             temperature: float = typer.Option(0.0, "--temperature", metavar="T",
                                               rich_help_panel=GENERATION,
                                               help="0: greedy; above 0: sample at T."),
             top_p: float = typer.Option(1.0, "--top-p", metavar="P", rich_help_panel=GENERATION,
                                         help="With --temperature: nucleus sampling."),
             seed: int = typer.Option(0, "--seed", metavar="N", rich_help_panel=GENERATION,
                                      help="Random seed of the sampling."),
             engine: str = typer.Option("auto", "--engine", metavar=one_of(ENGINES),
                                        rich_help_panel=GENERATION,
                                        help="Decode loop: auto (static KV cache on a CPU, "
                                        "transformers' generate on a GPU), generate, static, "
                                        "or compiled (static cache + torch.compile: ~40 s to "
                                        "compile on 2 cores, then faster per token)."),
             device: str = Device, dtype: str = Dtype, backend: str = Backend,
             as_json: bool = Json, quiet: bool = Quiet):
    """Generate text from a saved LM (batch 1), streamed as the tokens arrive, then the
    speed: prefill apart, decode tokens/s."""
    args.saved_folder(folder, "lm")
    args.sampling(max_new_tokens, temperature, top_p)
    args.hardware(device, dtype, backend)
    args.choice("--engine", engine, ENGINES)
    from ..serve.generate import Sampling
    from ..serve.generate import generate as run

    loaded, serving = _open(folder, device, dtype, backend)

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = run(loaded, prompt, Sampling(max_new_tokens, temperature, top_p, seed),
                 chat_template, on_text=lambda t: None if as_json else show(t), engine=engine)
    result.update(backend=serving["backend"], served_layers=serving["served_layers"],
                  dtype=str(loaded.dtype).removeprefix("torch."),
                  memory_mib=serving["memory_mib"])
    if as_json:
        typer.echo(json.dumps(result))
        return
    tps = result["decode_tokens_per_s"]
    typer.echo("")
    typer.echo(f"{result['new_tokens']} new tokens; prefill {result['prefill_s']:.2f} s "
               f"({result['prompt_tokens']} prompt tokens); decode "
               + (f"{tps:.1f} tokens/s" if tps else "n/a (one token)")
               + f" ({result['sampling']}, {serving['backend']} {result['dtype']}, "
               f"{result['engine']}, {result['device']}; {result['memory_mib']:.3g} MiB "
               "of weights in memory)", err=True)


@command
def predict(folder: Path = Folder,
            images: list[Path] = typer.Argument(..., metavar="IMAGE...",
                                                help="Image files (PNG, JPEG, ...)."),
            top: int = typer.Option(5, "--top", metavar="K", help="How many classes per image."),
            device: str = Device, dtype: str = Dtype, backend: str = Backend,
            as_json: bool = Json, quiet: bool = Quiet):
    """The top classes of each image with their probabilities, from a saved image
    classifier (class names when the folder knows them)."""
    args.saved_folder(folder, "vit")
    files = args.image_files([str(p) for p in images])
    args.at_least("--top", top, 1, "classes per image")
    args.hardware(device, dtype, backend)
    from ..serve.predict import predict as run

    loaded, _ = _open(folder, device, dtype, backend)
    rows = run(loaded, files, top)
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "images": rows}))
        return
    for row in rows:
        emit(False, row["image"], {f"{i}. {r['name']}": f"{r['probability']:.4f}"
                                    for i, r in enumerate(row["top"], 1)})


@command
def export(folder: Path = Folder,
           fmt: str = typer.Option("gguf", "--format", metavar=one_of(EXPORT_FORMATS),
                                   rich_help_panel=OUTPUT, help="The file format."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                              rich_help_panel=OUTPUT, show_default="DIR.gguf",
                                              help="The file to write."),
           force: bool = typer.Option(False, "--force", metavar="", rich_help_panel=OUTPUT,
                                      help="Replace an existing --out file."),
           as_json: bool = Json, quiet: bool = Quiet):
    """Write a saved LM as one GGUF file (llama.cpp, transformers' gguf_file=): each
    layer in the GGUF type that holds its HQQ weights exactly where one does."""
    args.saved_folder(folder, "lm")
    args.choice("--format", fmt, EXPORT_FORMATS)
    out = out or folder.parent / f"{folder.name}.gguf"
    args.new_file("--out", out, force)
    import torch

    from ..models import saved
    from ..serve import gguf

    loaded = saved.load(folder, torch.device("cpu"), torch.float32)
    result = gguf.export(loaded, out, folder.name)
    emit(as_json, f"autoq export: {folder} -> {out}", result)

"""How the command line looks: the options several commands share (defaults live here,
once), their help panels and metavars (choices listed, no `<bool>`), and click's own
usage errors as one line, like autoq's.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand, TyperGroup

from ..tasks import task_names
from . import args


class PlainHelp:
    """`-h, --help` listed without a `<bool>` type, like every other flag."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(PlainHelp, TyperCommand):
    """A command whose arguments show their name (PLAN), not a type (`<path>`)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        for param in self.params:
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None


class OneLineErrors(PlainHelp, TyperGroup):
    """click's own usage errors (`--trials abc`, an unknown option) as one line too."""

    def main(self, *a, standalone_mode: bool = True, **kw):
        if not standalone_mode:
            return super().main(*a, standalone_mode=False, **kw)
        try:
            code = super().main(*a, standalone_mode=False, **kw)
        except Exception as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()
                sys.exit(0)
            if not hasattr(e, "format_message") or not hasattr(e, "exit_code"):
                raise
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


# ---- options shared by several commands (defaults live here, once) -----------------
MODEL_DATA, QUANT, TARGET, BUDGET, STRATEGY, STORAGE, SPEED, OUTPUT = (
    "Model & data", "Quantization", "Target", "Search budget", "Search space & sampler",
    "Storage", "Speed & hardware", "Output")
DEFAULT_MODEL = "smollm2"


def one_of(options) -> str:
    return "[" + "|".join(options) + "]"


def Model(default: str | None = DEFAULT_MODEL, shown: str | bool = True):
    return typer.Option(default, "--model", "-m", metavar="SPEC", rich_help_panel=MODEL_DATA,
                        show_default=shown, help="Registry name, hf:<id|path> or "
                        "timm:<name>[?k=v&...] (see `autoq models`).")


Task = typer.Option(None, "--task", "-t", metavar=one_of(task_names()),
                    rich_help_panel=MODEL_DATA, show_default="the model's usual task",
                    help="What to score the model on.")
Data = typer.Option(None, "--data", metavar="PATH", rich_help_panel=MODEL_DATA,
                    show_default="the hub",
                    help="Local data: a raw WikiText-2 file (for search, the search split: "
                    "wiki.valid.raw) or the cifar-100-python folder (digits takes none).")
SeqLen = typer.Option(None, "--seq-len", metavar="N", rich_help_panel=MODEL_DATA,
                      show_default="2048", help="Tokens per perplexity window (at least 2).")
Limit = typer.Option(None, "--limit", metavar="N", rich_help_panel=MODEL_DATA,
                     show_default="all", help="Use only the first N windows / images.")
Checkpoint = typer.Option(None, "--checkpoint", metavar="FILE", rich_help_panel=MODEL_DATA,
                          help="State dict for ViTs (loaded with weights_only=True).")
Device = typer.Option("auto", "--device", metavar="[auto|cpu|cuda|cuda:N]",
                      rich_help_panel=SPEED, help="auto: cuda if there is a GPU, else cpu.")
Dtype = typer.Option("auto", "--dtype", metavar=one_of(args.DTYPES), rich_help_panel=SPEED,
                     help="Compute dtype; auto: fp16 on GPU, fp32 on CPU.")
Backend = typer.Option("auto", "--backend", metavar=one_of(args.BACKENDS), rich_help_panel=SPEED,
                       help="Serving kernels; auto: gemlite on CUDA when installed, else hqq.")
CacheDir = typer.Option(None, "--cache-dir", metavar="DIR", rich_help_panel=STORAGE,
                        show_default="memory only",
                        help="Reuse quantized layers across runs from this folder.")
Json = typer.Option(False, "--json", metavar="", rich_help_panel=OUTPUT,
                    help="Print one JSON object (no table, no progress).")
Quiet = typer.Option(False, "--quiet", "-q", metavar="", rich_help_panel=OUTPUT,
                     help="No progress lines or bars (the libraries' too).")


def choice_option(default: str, flag: str, choices, panel: str, help: str):
    return typer.Option(default, flag, metavar=one_of(choices), rich_help_panel=panel, help=help)


Minimize = choice_option("size", "--minimize", args.OBJECTIVES, TARGET,
                         "Minimise under the target: size (MiB), or latency (predicted time per "
                         "token / image).")
Sampler = typer.Option(None, "--sampler", metavar=one_of(args.SAMPLERS), rich_help_panel=STRATEGY,
                       show_default="evolve at a size budget, else sensitivity",
                       help="Trials after the prior: sensitivity (recalibrated knapsack, "
                       "perturbed sensitivities), evolve (level-switch mutations and "
                       "crossover of the best plans, under a size budget), nsga2 or random.")
TrialSpeed = choice_option("predicted", "--trial-speed", args.TRIAL_SPEEDS, SPEED,
                           "Per-trial speed: predicted (latency model; Pareto configs "
                           "re-measured) or measured.")


def target_option(flag: str, what: str):
    return typer.Option(None, flag, metavar="X|none", rich_help_panel=TARGET,
                        help=f"Quality target: {what}; none: no target, map the whole trade-off.")

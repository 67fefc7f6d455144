"""The `rnnlm` command.

    rnnlm fit | validate --config configs/char.yaml [--model.* --data.* --trainer.*]   (LightningCLI)
    rnnlm prepare --config configs/char.yaml [--corpus PATH]                          tokenize once
    rnnlm plot RUN_DIR [RUN_DIR ...] [--out curves.png] [--val loss|bpc]                loss curves
    rnnlm export CKPT --out DIR [--quantize int8]                                      ONNX step + manifest
    rnnlm sample DIR [--prompt ...] | rnnlm eval DIR --text FILE                       torch-free runtime
    rnnlm serve DIR [--host 127.0.0.1 --port 8000 --api-key KEY ...]                   HTTP, OpenAI completions

Bad input raises RnnlmError, printed here as one line (exit status 2); a bad option is an argparse
error (status 2). A reader that closes stdout (`rnnlm sample DIR | head`) ends the command quietly
with status 0, Ctrl-C with status 130, neither with a traceback.
"""

import argparse
import importlib
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

from rnnlm.curves import VAL_METRICS
from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import UNKNOWN_POLICIES

LIGHTNING_COMMANDS = ("fit", "validate")
# Lightning's and torch's advice that does not apply to rnnlm's loaders, folders and the eager steps of a graphed run
# (rnnlm.graphed: its warm-up, a batch of another shape) (tests/conftest.py applies them too)
QUIET_WARNINGS = (
    r".*capturable=True can impair performance.*",
    r".*does not have many workers.*",
    r".*`IterableDataset` has `__len__` defined.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*use `self.log\('val/.*sync_dist=True.*",  # under DDP: the module sums val/loss over the ranks itself
    r".*torch.distributed.nn.functional.all_gather is deprecated.*",  # inside Lightning's all_gather
)


def lightning_main(argv: list[str] | None) -> None:
    """LightningCLI; argv None reads sys.argv."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

    from rnnlm.data import RNNLMDataModule
    from rnnlm.module import RNNLMModule

    class RNNLMCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments(
                "data.tokenizer", "model.vocab_size", compute_fn=lambda tokenizer: tokenizer.vocab_size,
                apply_on="instantiate",
            )

        def instantiate_trainer(self, **kwargs):
            """Everything of a run under default_root_dir: checkpoints/ (best.ckpt, last.ckpt, which
            `--ckpt_path last` resumes), and per run logs/version_N/metrics.csv (and tensorboard/ when installed)."""
            config = self.config_init[self.subcommand]["trainer"]
            root = config.get("default_root_dir") or os.getcwd()
            if config.get("logger") in (None, True):
                loggers = [CSVLogger(root, name="logs")]
                if _TENSORBOARD_AVAILABLE:
                    loggers.append(TensorBoardLogger(root, name="tensorboard"))
                kwargs.setdefault("logger", loggers)
            trainer = super().instantiate_trainer(**kwargs)
            if trainer.checkpoint_callback is checkpoints:
                checkpoints.dirpath = os.path.realpath(os.path.join(root, "checkpoints"))
            return trainer

    checkpoints = ModelCheckpoint(
        filename="best", monitor="val/loss", mode="min", save_last=True, enable_version_counter=False
    )
    start = time.perf_counter()
    cli = RNNLMCLI(
        RNNLMModule,
        RNNLMDataModule,
        args=argv,
        trainer_defaults={"callbacks": [checkpoints]},
        save_config_kwargs={"overwrite": True},
    )
    if cli.subcommand == "fit" and cli.trainer.is_global_zero:
        end_of_fit(Path(cli.trainer.default_root_dir), time.perf_counter() - start)


def end_of_fit(run: Path, seconds: float) -> None:
    """Draw the run's curves.png and print what the run reached and what to do next."""
    from rnnlm.curves import plot, read_curves, summary

    try:
        curves = read_curves(run)
    except RnnlmError:  # nothing logged yet: a run shorter than its logging interval
        curves = None
    png = plot([curves], run / "curves.png") if curves else None
    print(f"\n{summary(run, seconds, curves, png)}")


def plot_command(args: argparse.Namespace) -> None:
    from rnnlm.curves import plot, read_curves

    out = plot([read_curves(run) for run in args.runs], args.out, args.val)
    print(f"wrote {out}")


def prepare_command(args: argparse.Namespace) -> None:
    """Tokenize the corpus of a config's data: section (prepare's own defaults for what it leaves out)."""
    import inspect

    import yaml

    from rnnlm.corpus import prepare

    data = {}
    if args.config:
        try:
            data = (yaml.safe_load(open(args.config, encoding="utf-8")) or {}).get("data") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise RnnlmError(f"cannot read the data: section of {args.config} ({type(e).__name__}); "
                             "give a training YAML such as configs/char.yaml") from None
    options = {k: v for k, v in data.items() if k in inspect.signature(prepare).parameters}
    if args.corpus:
        options["corpus"] = args.corpus
    print((prepare(**options) / "meta.json").read_text())


def command_parser() -> argparse.ArgumentParser:
    """The commands outside LightningCLI, each a subparser whose `run` takes the parsed args."""
    parser = argparse.ArgumentParser(prog="rnnlm", description="A recurrent language model from its equations.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("fit", help="train (LightningCLI: rnnlm fit --help)")
    commands.add_parser("validate", help="score a checkpoint on the validation split (LightningCLI)")
    p = commands.add_parser("prepare", help="tokenize a corpus once and print its meta.json")
    p.add_argument("--config", help="a training YAML whose data: section to use")
    p.add_argument("--corpus", help="a text file or a corpus name (overrides the config)")
    p.set_defaults(run=prepare_command)
    p = commands.add_parser("plot", help="draw the loss curves of training runs into a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of rnnlm fit (--trainer.default_root_dir)")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    p.add_argument("--val", choices=VAL_METRICS, default="loss", help="the validation curve: val/loss or val/bpc")
    p.set_defaults(run=plot_command)
    p = commands.add_parser("export", help="write a checkpoint as an ONNX step function, tokenizer and manifest")
    p.add_argument("checkpoint", help="a .ckpt file written by rnnlm fit")
    p.add_argument("--out", required=True, help="the folder to write (an earlier export there is replaced)")
    p.add_argument("--quantize", choices=["int8"], help="onnxruntime dynamic int8 quantization")
    p.set_defaults(run=deferred("rnnlm.export", "export_command"))
    # The runtime's options are checked here (finite, in range), so that a bad one is an argparse error.
    p = commands.add_parser("sample", help="stream text from an exported folder (runtime only, no torch)",
                            usage="%(prog)s DIR [options]  (--help lists them)")
    runtime_arguments(p)
    p.add_argument("--prompt", type=text(), default="", help="the text to continue (default: the start token)")
    p.add_argument("-n", "--max-new-tokens", type=bounded(int, 1), help="tokens to sample (default: the manifest's)")
    p.add_argument("--temperature", type=bounded(float, 0), help="0 is greedy (default: the manifest's)")
    p.add_argument("--top-k", type=bounded(int, 0), help="sample among the k most probable tokens (0: all)")
    p.add_argument("--top-p", type=bounded(float, 0, 1, above=True),
                   help="sample among the most probable tokens of this mass (1: all)")
    p.add_argument("--stop", type=text(empty=False), action="append", help="stop before this string (repeatable)")
    p.add_argument("--seed", type=bounded(int, 0, MAX_SEED), help="the same seed gives the same text")
    p.set_defaults(run=deferred("rnnlm.runtime.commands", "sample_command"))
    p = commands.add_parser("eval", help="bits per character of a text under an exported folder (runtime only)",
                            usage="%(prog)s DIR --text FILE [options]  (--help lists them)")
    runtime_arguments(p)
    p.add_argument("--text", required=True, help="a UTF-8 text file to score")
    p.add_argument("--val", action="store_true", help="score only the characters that rnnlm fit holds out for "
                   "validation when the file is its corpus (the last part of it)")
    p.set_defaults(run=deferred("rnnlm.runtime.commands", "eval_command"))
    p = commands.add_parser("serve", help="serve an exported folder over HTTP: OpenAI completions, continuous batching",
                            usage="%(prog)s DIR [options]  (--help lists them)")
    runtime_arguments(p, threads=1)  # one: the event loop and the clients want the other cores
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    p.add_argument("--port", type=bounded(int, 1, 65535), default=8000)
    p.add_argument("--api-key", type=checked("check_api_key"), default=os.environ.get(API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY`, KEY compared as UTF-8 bytes; no whitespace or control "
                        f"characters (default: ${API_KEY_ENV}, else none; an empty key is an error)")
    p.add_argument("--model-name", type=checked("check_model_id"),
                   help="the model id clients send (default: the folder's name)")
    for option, kind, low, what in [
        ("--max-active", int, 1, "sequences stepped together in one batch"),
        ("--max-queued", int, 0, "sequences waiting for a slot before requests get 429"),
        ("--max-tokens", int, 1, "the largest max_tokens a request may ask"),
        ("--max-prompt-tokens", int, 1, "the longest prompt, in tokens"),
        ("--max-body-bytes", int, 1, "the largest request body"),
        ("--timeout", float, 0, "seconds from a request's arrival to its last token (> 0)"),
        ("--shutdown-grace", float, 0, "seconds running requests get after SIGTERM or SIGINT"),
        ("--stream-interval", float, 0, "seconds between writes to a stream after its first text"),
    ]:
        checked_type = bounded(kind, low, above=option == "--timeout")
        p.add_argument(option, type=checked_type, help=f"{what} (the startup log shows the default)")
    p.set_defaults(run=deferred("rnnlm.runtime.server", "serve_command"))
    return parser


API_KEY_ENV = "RNNLM_API_KEY"  # serve's --api-key default
MAX_SEED = 2**64 - 1  # seeds are integers in [0, 2^64)


def runtime_arguments(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    parser.add_argument("model", help="an exported folder (rnnlm export)")
    parser.add_argument("--threads", type=bounded(int, 1, os.cpu_count()), default=threads,
                        help=f"onnxruntime intra-op threads, at most this machine's {os.cpu_count()} "
                             f"(default: {threads or 'its choice'})")
    parser.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="error",
                        help="characters absent from a char vocabulary: error (default), drop or replace them")


def bounded(kind: type, low: float, high: float | None = None, above: bool = False):
    """An argparse type: an int or a finite float from low to high (above: greater than low); nan, inf,
    and what is out of range are argparse errors that say the range."""
    what = "an integer" if kind is int else "a number"
    limits = (f"> {low}" if above else f">= {low}") if high is None else \
        (f"in ({low}, {high}]" if above else f"from {low} to {high}")

    def parse(value: str):
        try:
            number = kind(value)
        except (ValueError, OverflowError):
            number = None
        if number is None or kind is float and not math.isfinite(number) or number < low \
                or above and number == low or high is not None and number > high:
            raise argparse.ArgumentTypeError(f"must be {what} {limits}, got {value!r}")
        return number

    return parse


def text(empty: bool = True):
    """An argparse type: Unicode text (the shell may pass bytes that are not UTF-8), non-empty unless empty."""

    def parse(value: str) -> str:
        if not empty and not value:
            raise argparse.ArgumentTypeError("must not be empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError("is not UTF-8 text (the shell passed bytes UTF-8 cannot decode)") from None
        return value

    return parse


def checked(check: str):
    """An argparse type from a check of rnnlm.runtime.server (imported only when `serve` parses):
    its RnnlmError becomes the argparse error, without the value (it may be a secret)."""

    def parse(value: str) -> str:
        from rnnlm.runtime import server

        try:
            return getattr(server, check)(value)
        except RnnlmError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def deferred(module: str, function: str):
    """A command's run function, imported only when it runs: `rnnlm sample` never imports torch."""
    return lambda args: getattr(importlib.import_module(module), function)(args)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        if args and args[0] in LIGHTNING_COMMANDS:
            lightning_main(argv)
        else:
            parsed = command_parser().parse_args(args)
            parsed.run(parsed)
    except RnnlmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader of stdout left (`rnnlm sample DIR | head`): end quietly, with stdout pointed at
        # /dev/null so that the interpreter's last flush of it cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:  # Ctrl-C (serve drains instead: it handles SIGINT itself)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The `rnnlm` command.

    rnnlm fit | validate --config configs/char.yaml [--model.* --data.* --trainer.*]   (LightningCLI)
    rnnlm prepare --config configs/char.yaml [--corpus PATH]                          tokenize once

Bad input raises RnnlmError, printed here as one line (exit status 2).
"""

import argparse
import logging
import os
import sys
import warnings

from rnnlm.errors import RnnlmError

LIGHTNING_COMMANDS = ("fit", "validate")


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
    RNNLMCLI(
        RNNLMModule,
        RNNLMDataModule,
        args=argv,
        trainer_defaults={"callbacks": [checkpoints]},
        save_config_kwargs={"overwrite": True},
    )


def prepare_command(args: argparse.Namespace) -> None:
    import yaml

    from rnnlm.data import prepare

    data = (yaml.safe_load(open(args.config)) or {}).get("data", {}) if args.config else {}
    folder = prepare(
        args.corpus or data.get("corpus", "shakespeare"), data.get("tokenizer", "char"),
        data.get("vocab_size", 2000), data.get("data_dir", "data"),
    )
    print((folder / "meta.json").read_text())


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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    try:
        if args and args[0] in LIGHTNING_COMMANDS:
            lightning_main(argv)
        else:
            parsed = command_parser().parse_args(args)
            parsed.run(parsed)
    except RnnlmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""The `rnnlm` command.

    rnnlm fit | validate --config configs/char.yaml [--model.* --data.* --trainer.*]   (LightningCLI)

Bad input raises RnnlmError, printed here as one line (exit status 2).
"""

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
            """The CSV logger always (and TensorBoard when installed), writing straight into
            default_root_dir, so metrics.csv and checkpoints/ lie there and a resume appends."""
            config = self.config_init[self.subcommand]["trainer"]
            if config.get("logger") in (None, True):
                root = config.get("default_root_dir") or os.getcwd()
                loggers = [CSVLogger(root, name="", version="")]
                if _TENSORBOARD_AVAILABLE:
                    loggers.append(TensorBoardLogger(root, name="", version="tensorboard"))
                kwargs.setdefault("logger", loggers)
            return super().instantiate_trainer(**kwargs)

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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    try:
        if not args or args[0] in ("-h", "--help") or args[0] in LIGHTNING_COMMANDS:
            lightning_main(argv)
        else:
            raise RnnlmError(f"unknown command {args[0]!r}: use one of {', '.join(LIGHTNING_COMMANDS)}")
    except RnnlmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

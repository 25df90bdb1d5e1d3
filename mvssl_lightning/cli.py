"""The ``mvssl`` command: a LightningCLI over every method and the multi-view data module.

    mvssl fit --config configs/mveb_r50.yaml
    mvssl fit --config configs/quickstart.yaml --trainer.max_epochs 2 --model.lr 0.1

Any method is chosen by ``model.class_path`` (every method subclasses ``SiameseModule``). Every run starts
from :data:`TRAINER_DEFAULTS` and ``seed_everything: 0``; a config file then holds only its recipe.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.methods.base import SiameseModule

#: The trainer settings every config shares (one file per paper recipe keeps only what differs).
#:
#: Why parser defaults: they are ordinary values of the ``trainer`` section, so ``--print_config`` shows
#: them, and a config or the command line overrides them like any other value (``check_val_every_n_epoch:
#: 20``; ``logger: {init_args: {name: mveb_r50}}`` changes only the name; ``callbacks:`` replaces the
#: list, ``callbacks+:`` appends to it: the configs append their probe / kNN, whose ``num_classes`` and
#: presence depend on the dataset). ``LightningCLI(trainer_defaults=...)`` would do for the scalar values,
#: but callbacks given there are "persistent": added at instantiation, absent from ``--print_config`` and
#: impossible to remove from a config. A packaged defaults YAML (``parser_kwargs={"default_config_files":
#: ...}``) would be a second file per run to find and ship, for the same result.
TRAINER_DEFAULTS: dict[str, Any] = {
    "log_every_n_steps": 50,
    "check_val_every_n_epoch": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs"},  # + name: <config name> in each config -> runs/<name>/version_<n>
    },
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
    ],
}


class MVSSLCLI(LightningCLI):
    """LightningCLI with the shared trainer defaults of :data:`TRAINER_DEFAULTS`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({f"trainer.{key}": copy.deepcopy(value) for key, value in TRAINER_DEFAULTS.items()})


def run_cli(args: Optional[list[str]] = None) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand and return the CLI object."""
    return MVSSLCLI(
        SiameseModule,
        MultiViewDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``mvssl`` console script (returns nothing, so the exit status is 0)."""
    run_cli(args)


if __name__ == "__main__":
    main()

"""The ``mvssl`` command: a LightningCLI over every method and the multi-view data module.

    mvssl fit --config configs/mveb_r50.yaml
    mvssl fit --config configs/quickstart.yaml --trainer.max_epochs 2 --model.lr 0.1

Any method is chosen by ``model.class_path`` (every method subclasses ``SiameseModule``).
"""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.cli import LightningCLI

from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.methods.base import SiameseModule


def run_cli(args: Optional[list[str]] = None) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand and return the CLI object."""
    return LightningCLI(
        SiameseModule,
        MultiViewDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``mvssl`` console script (returns nothing, so the exit status is 0)."""
    run_cli(args)


if __name__ == "__main__":
    main()

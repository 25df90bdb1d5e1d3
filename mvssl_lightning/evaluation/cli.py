"""The ``mvssl-eval`` command: linear evaluation, fine-tuning and kNN of a checkpoint, as LightningCLI.

    mvssl-eval fit --config configs/eval/linear_quickstart.yaml \\
        --model.checkpoint runs/quickstart/version_0/checkpoints/last.ckpt
    mvssl-eval validate --config configs/eval/knn_quickstart.yaml --model.checkpoint ...

``fit`` trains the head (``LinearEval``) or the whole network (``FineTune``) and validates it;
``validate`` evaluates (``KNNEval``, or a trained ``LinearEval`` with ``--ckpt_path``); LightningCLI's
``--optimizer`` / ``--lr_scheduler`` are not offered (they would replace the protocol's optimiser and schedule,
which are model settings: ``--model.optimizer``, ``--model.lr``, ...). The model is chosen by
``model.class_path`` (every evaluation module subclasses ``EvalModule``), the data by
``LabeledDataModule``'s arguments. As ``mvssl`` (``mvssl_lightning/cli.py``), every run starts from
:data:`EVAL_TRAINER_DEFAULTS` and ``seed_everything: 0``, so a config holds only its protocol. After the
run, ``<log_dir>/eval_results.json`` holds top-1 / top-5, the checkpoint's path and SHA-256, the resolved
configuration and the wall time (:class:`~mvssl_lightning.evaluation.results.EvalResultsWriter`, whose
file name is ``--results.filename``).
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Optional

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mvssl_lightning.core.cli_output import error_line, metrics_table
from mvssl_lightning.core.precision import apply_cpu_precision
from mvssl_lightning.core.trainer_defaults import resolve_run_settings, trainer_defaults
from mvssl_lightning.evaluation.data import LabeledDataModule
from mvssl_lightning.evaluation.modules import EvalModule
from mvssl_lightning.evaluation.results import EvalResultsWriter

__all__ = ["EVAL_TRAINER_DEFAULTS", "EvalCLI", "main", "run_cli"]

#: The trainer settings every evaluation config shares (as ``mvssl``'s ``TRAINER_DEFAULTS``: parser defaults,
#: so ``--print_config`` shows them and a config overrides them; ``callbacks+:`` appends to the list).
EVAL_TRAINER_DEFAULTS: dict[str, Any] = trainer_defaults(
    check_val_every_n_epoch=1,
    callbacks=[
        # the evaluated module, frozen backbone included, every 10 epochs (and last.ckpt): enough to resume
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "every_n_epochs": 10},
        },
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
    ],
)


class EvalCLI(LightningCLI):
    """LightningCLI with ``fit`` and ``validate``, the shared trainer defaults and the results JSON."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({f"trainer.{key}": copy.deepcopy(value) for key, value in EVAL_TRAINER_DEFAULTS.items()})
        parser.add_lightning_class_args(EvalResultsWriter, "results")

    def before_instantiate_classes(self) -> None:
        # as mvssl: a 16-bit precision on a run that ends up on the CPU becomes 32-true (one warning); the run
        # directory follows default_root_dir, and without a logger there is no LearningRateMonitor
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        apply_cpu_precision(config.trainer)
        resolve_run_settings(config.trainer)

    def _attach_config(self) -> None:
        """Give the results writer the resolved configuration of this run."""
        subcommand = self.subcommand
        if subcommand is None:
            return
        dumped = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[subcommand]
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, EvalResultsWriter):
                callback.config = dumped

    def before_fit(self) -> None:
        self._attach_config()

    def before_validate(self) -> None:
        self._attach_config()
        # Lightning's table repeats epoch-level metrics (kNN) under every validation loader; after_validate
        # prints each once instead
        self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        """Print every metric once, and where the results file went."""
        if not self.trainer.is_global_zero:
            return
        table = metrics_table(self.trainer.callback_metrics)
        if table:
            print(table)
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, EvalResultsWriter) and callback.path is not None:
                print(f"results: {callback.path}", flush=True)


def run_cli(args: Optional[list[str]] = None) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand and return the CLI object."""
    return EvalCLI(
        EvalModule,
        LabeledDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the protocol's optimiser and schedule are model settings
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``mvssl-eval`` console script (returns nothing, so the exit status is 0).

    As ``mvssl``: a constructor that rejects its arguments (a missing or truncated checkpoint, a backbone or
    stem that does not fit it, an evaluation checkpoint given as a pre-training one) prints one line naming
    the problem and exits with 2 (:func:`~mvssl_lightning.core.cli_output.error_line`)."""
    try:
        run_cli(args)
    except (ValueError, TypeError, OSError) as error:
        line = error_line("mvssl-eval", error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

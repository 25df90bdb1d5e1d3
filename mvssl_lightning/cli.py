"""The ``mvssl`` command: a LightningCLI over every method and the multi-view data module.

    mvssl fit --config configs/mveb_r50.yaml
    mvssl fit --config configs/quickstart.yaml --trainer.max_epochs 2 --model.lr 0.1
    mvssl fit --config configs/quickstart.yaml --ckpt_path last        # resume the latest run
    mvssl validate --config configs/quickstart.yaml --ckpt_path last   # kNN + probe of a checkpoint

Any method is chosen by ``model.class_path`` (every method subclasses ``SiameseModule``). Every run starts
from :data:`TRAINER_DEFAULTS` and ``seed_everything: 0``; a config file then holds only its recipe.

Subcommands: ``fit`` and ``validate`` (Lightning's ``test`` and ``predict`` need steps and loaders the
methods do not define, so they are not offered).  The optimiser and its schedule are settings of the
method (``--model.optimizer``, ``--model.lr``, ...), so LightningCLI's ``--optimizer`` /
``--lr_scheduler``, which would silently replace the recipe's LARS, warm-up and cosine, are not offered
either.  ``--ckpt_path`` resumes honestly (:mod:`mvssl_lightning.resume`): the same method and
hyperparameters, the same run directory, and ``last`` only when there is something to resume.
"""

from __future__ import annotations

import copy
import inspect
import sys
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from mvssl_lightning.callbacks import RunSummary
from mvssl_lightning.core.cli_output import error_line, metrics_table
from mvssl_lightning.core.precision import apply_cpu_precision
from mvssl_lightning.core.trainer_defaults import resolve_run_settings, trainer_defaults
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.methods.base import SiameseModule, ViewCountError
from mvssl_lightning.models.timm_backbone import ViewSizeError
from mvssl_lightning.resume import ResumeError, hparam_differences, plan_resume, resolve_class

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
TRAINER_DEFAULTS: dict[str, Any] = trainer_defaults(
    check_val_every_n_epoch=10,
    callbacks=[
        # one file per run: the latest epoch's checkpoint, and last.ckpt a link to it (not a second copy)
        {"class_path": "mvssl_lightning.callbacks.RunCheckpoint", "init_args": {"save_last": "link"}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "mvssl_lightning.callbacks.PreemptionCheckpoint"},
        {"class_path": "mvssl_lightning.callbacks.TrainingHealth"},
    ],
)


class MVSSLCLI(LightningCLI):
    """LightningCLI with the shared trainer defaults of :data:`TRAINER_DEFAULTS` and honest resuming."""

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"}}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({f"trainer.{key}": copy.deepcopy(value) for key, value in TRAINER_DEFAULTS.items()})
        parser.add_argument(
            "--validate_at_start", type=bool, default=False,
            help="fit: run a validation pass (kNN, probes) before the first training step, so the run's "
            "accuracies at initialisation are logged (step 0) and summarised (RunSummary)",
        )

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Every ``fit`` ends with a :class:`~mvssl_lightning.callbacks.RunSummary` (table and learning
        curves); a config that lists its own (e.g. with ``offline_probe: true``) keeps that one."""
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]
        if self.subcommand == "fit" and not any(isinstance(c, RunSummary) for c in callbacks):
            callbacks.append(RunSummary())
        return trainer

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("validate_at_start") and not config.get("ckpt_path"):
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)

    def before_validate(self) -> None:
        # Lightning's table repeats epoch-level metrics (kNN, probe) under every validation loader;
        # after_validate prints each once instead
        self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        """Print every metric of ``mvssl validate`` once (kNN and probe are computed over both loaders)."""
        table = metrics_table(self.trainer.callback_metrics)
        if table and self.trainer.is_global_zero:
            print(table)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if getattr(self, "_resume_from", None) is not None:
            config.ckpt_path = self._resume_from  # held back in parse_arguments
        apply_cpu_precision(config.trainer)
        if self.config.get("subcommand") == "fit":
            _report_overrides(config.model)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then plan an honest resume (:mod:`mvssl_lightning.resume`) of ``--ckpt_path``.

        LightningCLI would next overwrite the configured model with the checkpoint's hyperparameters (a
        different method or ``--model.lr`` dropped without a word). So the resolved checkpoint is held
        back from the parsed configuration here and put back in :meth:`before_instantiate_classes`, after
        that step has found nothing to do; both are public LightningCLI hooks."""
        super().parse_arguments(parser, args)
        self._resume_from: Optional[str] = None
        subcommand = self.config.get("subcommand")
        if subcommand and isinstance(self.config[subcommand].get("trainer"), Namespace):
            resolve_run_settings(self.config[subcommand].trainer)  # default_root_dir; no logger, no LR monitor
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return
        config = self.config[subcommand]
        if config.ckpt_path in ("best", "hpc", "registry"):
            return  # Lightning's own meanings
        model = config.model
        init_args = model.init_args.as_dict() if isinstance(model.get("init_args"), Namespace) else {}
        plan = plan_resume(config.ckpt_path, _run_dirs(config.trainer), model.get("class_path"), init_args)
        self._resume_from, config.ckpt_path = str(plan.ckpt_path), None
        logger = config.trainer.get("logger")
        if plan.version is not None and isinstance(logger, Namespace) and "init_args" in logger:
            if logger.init_args.get("version") is None and "TensorBoardLogger" in str(logger.get("class_path")):
                logger.init_args.version = plan.version  # continue in the same runs/<name>/version_N


def _report_overrides(model: Namespace) -> None:
    """Say which model settings differ from the method's own recipe defaults (its signature), i.e. come
    from the config or the command line: after ``--model.class_path MEC`` on an MVEB config, the MVEB
    values that stay (``optimizer: lars``...) are listed instead of passing silently."""
    if not isinstance(model, Namespace) or not isinstance(model.get("init_args"), Namespace):
        return
    try:
        signature = inspect.signature(resolve_class(model.class_path))
    except (AttributeError, ImportError, ValueError, TypeError):
        return
    given = model.init_args.as_dict()
    changed = [
        f"{name}={given[name]!r} (default {p.default!r})"
        for name, p in signature.parameters.items()
        if name in given and p.default is not inspect.Parameter.empty and not _same(given[name], p.default)
    ]
    if changed:
        rank_zero_info(
            f"{model.class_path.rpartition('.')[2]}: settings from the config / command line that differ from "
            f"the method's recipe defaults: {', '.join(changed)}"
        )


def _same(a: Any, b: Any) -> bool:
    return not hparam_differences({"x": a}, {"x": b})


def _run_dirs(trainer: Namespace) -> list[Path]:
    """The one directory this configuration's run writes its checkpoints under (``--ckpt_path last`` looks
    nowhere else): ``<save_dir>/<name>`` of its TensorBoard/CSV logger (``.../version_<v>`` when the logger's
    version is set), ``<default_root_dir>/lightning_logs`` for Lightning's default logger, else
    ``<default_root_dir>`` (the ``ModelCheckpoint`` defaults)."""
    root = Path(trainer.get("default_root_dir") or ".")
    logger = trainer.get("logger")
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        args = logger.init_args
        run_dir = Path(args.get("save_dir") or root)
        name = args.get("name")
        name = "lightning_logs" if name is None else name
        run_dir = run_dir / name if name else run_dir
        version = args.get("version")
        if version is not None:
            run_dir = run_dir / (version if isinstance(version, str) else f"version_{version}")
        return [run_dir]
    if logger is None or logger is True:
        return [root / "lightning_logs"]
    return [root]


def run_cli(args: Optional[list[str]] = None) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand and return the CLI object."""
    return MVSSLCLI(
        SiameseModule,
        MultiViewDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``mvssl`` console script.

    A preempted or interrupted run (SIGTERM / SIGUSR1 / a first Ctrl-C) exits with ``128 + signal`` after saving
    a checkpoint (:class:`~mvssl_lightning.callbacks.PreemptionCheckpoint`); a constructor that rejects its
    arguments, a resume that does not fit the configuration and a view recipe that gives the method the wrong
    number of views print one line (or a short list) naming the problem (jsonargparse would bury a
    constructor's error in a dump of the whole configuration) and exit with 2
    (:func:`~mvssl_lightning.core.cli_output.error_line`).
    """
    try:
        run_cli(args)
    except SIGTERMException as stop:
        sys.exit(stop.code if isinstance(stop.code, int) and stop.code else 143)
    except (ResumeError, ViewSizeError, ViewCountError) as error:
        print(f"mvssl: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, TypeError, OSError) as error:
        line = error_line("mvssl", error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

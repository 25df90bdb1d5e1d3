"""Long runs survive faults and bad input tells the truth (issue: resume, preemption, divergence, errors).

Each test reproduces a case that used to give a silently wrong result or a useless error through the
real ``mvssl`` entry point (:func:`mvssl_lightning.cli.main`) or a real ``mvssl fit`` process.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from preempt import KillAt

from mvssl_lightning.callbacks import TrainingHealth
from mvssl_lightning.callbacks.health import feature_std
from mvssl_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs/quickstart.yaml")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: a tiny quickstart: 4 steps per epoch on 32 images, small heads, no workers, no progress bar
TINY = [
    "--data.batch_size", "8", "--data.train_subset", "32", "--data.test_subset", "16", "--data.num_workers", "0",
    "--model.proj_hidden_dim", "32", "--model.proj_output_dim", "16", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


def fit(tmp_path: Path, *extra: str) -> None:
    main(["fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path), *TINY,
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra])


def exit_of(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return int(stop.value.code or 0), capsys.readouterr().err


# ----------------------------------------------------------------------------- 1. resume checks the run


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    fit(tmp, "--trainer.max_epochs", "1")
    (last,) = (tmp / "runs/quickstart/version_0/checkpoints").glob("last.ckpt")
    return last


def test_resume_with_another_method_is_an_error(one_epoch_run, tmp_path, capsys):
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                        "--model.class_path", "mvssl_lightning.methods.MEC", "--data.views", "two_views_cifar",
                        "--data.view_kwargs", "null", "--ckpt_path", str(one_epoch_run))
    assert code == 2
    assert "was written by ERSimCLR, but the configuration builds MEC" in err


def test_resume_with_changed_hyperparameters_lists_them(one_epoch_run, tmp_path, capsys):
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                        "--model.lr", "0.1", "--model.kappa", "5", "--ckpt_path", str(one_epoch_run))
    assert code == 2
    assert "lr: 1.0 (checkpoint) != 0.1 (config)" in err and "kappa: 10.0 (checkpoint) != 5.0 (config)" in err


def test_ckpt_path_last_with_nothing_to_resume_stops(tmp_path, capsys):
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--ckpt_path", "last")
    assert code == 2 and "nothing to resume" in err and str(tmp_path / "runs" / "quickstart") in err
    assert not any(tmp_path.rglob("*.ckpt"))  # and it did not train from scratch


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_checkpoint_names_the_file(tmp_path, capsys, one_epoch_run, content):
    bad = tmp_path / "bad.ckpt"
    if content is None:  # a truncated copy of a real checkpoint
        bad.write_bytes(one_epoch_run.read_bytes()[:100_000])
    else:
        bad.write_bytes(content)
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                        "--ckpt_path", str(bad))
    assert code == 2 and f"{bad} is not a readable checkpoint" in err


def test_resume_logs_into_the_same_version_directory(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1")
    fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    versions = sorted(p.name for p in (tmp_path / "runs/quickstart").iterdir())
    assert versions == ["version_0"]
    last = torch.load(tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and last["epoch"] == 1
    assert last["mvssl"]["class_path"] == "mvssl_lightning.methods.er.simclr.ERSimCLR" and last["mvssl"]["log_version"] == 0


# ----------------------------------------------------------------------------- 3. preemption


def test_sigterm_saves_a_resumable_checkpoint_and_exits_nonzero(tmp_path):
    """A real ``mvssl fit`` process gets SIGTERM during its first epoch."""
    cmd = [sys.executable, "-m", "mvssl_lightning", "fit", "--config", QUICKSTART, *TINY,
           "--data.train_subset", "4000", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = tmp_path / "runs/quickstart/version_0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for the first logged training step
        if any(f.stat().st_size > 200 for f in events.glob("events.out.tfevents.*")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    saved = events / "checkpoints/last.ckpt"
    assert "SIGTERM received at global step" in out and str(saved) in out
    state = torch.load(saved, weights_only=True)
    assert 0 < state["global_step"] < 500 and state["epoch"] == 0  # mid-epoch: 4000 / 8 = 500 steps


# ----------------------------------------------------------------------------- 7. divergence and collapse


class _Steps(pl.LightningModule):
    """A linear model whose training features are given: ``features(step)``."""

    def __init__(self, features) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.features = features

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return {"loss": loss, "features": self.features(self.global_step)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4)


def _run_health(features, health: TrainingHealth, max_steps: int = 12) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[health])
    trainer.fit(_Steps(features))
    return trainer


def test_feature_std_closed_forms():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, 64, generator=g, dtype=torch.float64)
    # isotropic Gaussian: each coordinate of the unit vector has std 1/sqrt(d) -> std x sqrt(d) ~ 1
    assert feature_std(spread) == pytest.approx(1.0, abs=0.02)
    collapsed = torch.ones(32, 64) + 1e-6 * torch.randn(32, 64, generator=g)
    assert feature_std(collapsed) < 1e-4


def test_collapse_warns_once_and_healthy_features_stay_silent():
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _run_health(lambda step: torch.randn(8, 16, generator=g), TrainingHealth(every_n_steps=2, min_step=2))
    assert not [w for w in seen if "TrainingHealth" in str(w.message)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _run_health(lambda step: torch.ones(8, 16), TrainingHealth(every_n_steps=2, min_step=2))
    messages = [str(w.message) for w in seen if "TrainingHealth" in str(w.message)]
    assert len(messages) == 1 and "collapsed at global step 2" in messages[0]


def test_huge_learning_rate_is_reported_as_divergence(tmp_path):
    """``--model.lr 1e6`` with LARS: the loss stays finite, the parameters explode."""
    health = TrainingHealth(every_n_steps=1, min_feature_std=None, action="stop")
    from mvssl_lightning import MVEB, MultiViewDataModule

    model = MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, lr=1e6, warmup_epochs=0)
    data = MultiViewDataModule("default", views="two_views_cifar", batch_size=8, num_workers=0,
                               train_subset=64, test_subset=8)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[health], default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"parameter norm is .*x its initial value at global step \d+"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step < 8  # "stop" ended the run early


def test_skip_nonfinite_grads_zeroes_the_step():
    from mvssl_lightning import MVEB

    model = MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, skip_nonfinite_grads=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.projector.parameters()).grad[0] = math.inf
    with pytest.warns(UserWarning, match="non-finite gradient"):
        model.on_before_optimizer_step(None)
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())


# ----------------------------------------------------------------------------- 8 and 9. errors and subcommands


def test_constructor_error_is_one_line_naming_the_argument(tmp_path, capsys):
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                        "--model.lr", "-1")
    assert code == 2 and err.strip().splitlines() == ["mvssl: error: ValueError: need lr > 0, weight_decay >= 0, "
                                                      "warmup_epochs >= 0; got -1.0, 1e-06, 1.0"]


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_subcommands_without_steps_are_not_offered(capsys, subcommand):
    code, err = exit_of(capsys, subcommand, "--config", QUICKSTART)
    assert code == 2 and "invalid choice" in err and "'fit'" in err and "'validate'" in err


def test_optimizer_override_is_refused_not_silently_applied(capsys, tmp_path):
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--optimizer", "AdamW")
    assert code == 2 and "--optimizer" in err


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    fit(tmp_path, "--trainer.fast_dev_run", "1")
    assert not list(tmp_path.rglob("*.ckpt"))


# ----------------------------------------------------------------------------- 2. resume is a continuation


def _exact_run(tmp_path: Path, workers: int, callbacks: list, ckpt_path=None):
    from mvssl_lightning import MVEB, MultiViewDataModule
    from mvssl_lightning.callbacks import PreemptionCheckpoint

    pl.seed_everything(0, verbose=False)
    model = MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, warmup_epochs=1)
    data = MultiViewDataModule("default", views="mveb_multicrop_cifar", view_kwargs={"n_local": 1}, batch_size=8,
                               num_workers=workers, train_subset=40, test_subset=8)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[PreemptionCheckpoint(), *callbacks], enable_checkpointing=False)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_preempted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, workers):
    """5 steps per epoch; the interrupted run is stopped by SIGTERM after step 7 (mid-epoch 1),
    saves ``last.ckpt`` and is resumed from it: every parameter and buffer equals the uninterrupted run's."""
    reference, expected = _exact_run(tmp_path / "a", workers, [])
    assert reference.global_step == 10
    with pytest.raises(SystemExit) as stop:
        _exact_run(tmp_path / "b", workers, [KillAt(7)])
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = tmp_path / "b/checkpoints/last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 7
    resumed, got = _exact_run(tmp_path / "b", workers, [], ckpt_path=str(ckpt))
    assert resumed.global_step == 10
    assert set(got) == set(expected)
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- 4. evaluation tells the truth


def test_limited_validation_sees_every_class_and_num_classes_comes_from_the_data(tmp_path):
    """The embedded data are sorted by class: the first 5 batches of 32 used to be all airplanes, so kNN
    scored 1.0 with a one-class bank and num_classes inferred as 1."""
    from mvssl_lightning import MVEB, MultiViewDataModule, OnlineKNN

    data = MultiViewDataModule("default", views="two_views_cifar", batch_size=32, num_workers=0)
    data.setup()
    first = torch.cat([y for _, y in list(data.val_dataloader()[0])[:5]])
    assert len(first.unique()) == 10  # a random sample, not the first class
    knn = OnlineKNN(k=20)
    pl.seed_everything(0, verbose=False)
    model = MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, limit_val_batches=5, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[knn], default_root_dir=tmp_path)
    trainer.validate(model, datamodule=data)
    assert knn._dataset_classes == 10
    assert 0.0 < float(trainer.callback_metrics["knn/top1"]) < 0.5  # random init: far from a perfect 1.0


def test_a_bank_missing_query_classes_is_a_warning_naming_both_counts():
    from mvssl_lightning import OnlineKNN

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 8, generator=g)
    bank_y, query_y = torch.zeros(20, dtype=torch.long), torch.arange(20) % 4

    class _Val(pl.LightningModule):
        def forward(self, x):
            return x

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return {"features": batch[0], "targets": batch[1]}

    loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(f, y), batch_size=10)
               for f, y in ((feats[:20], bank_y), (feats[20:], query_y))]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[OnlineKNN(k=5, num_classes=4)])
    with pytest.warns(UserWarning, match=r"the bank holds 1 classes but the queries 4 \(of 4\)"):
        trainer.validate(_Val(), loaders)


def test_switching_the_method_is_one_flag_with_views_auto(tmp_path):
    """``views: auto`` takes the method's own recipe; view_kwargs meant for another recipe are ignored
    with a warning (used to be a TypeError, or a view-count error, unless --data.view_kwargs null)."""
    with pytest.warns(UserWarning, match=r"view_kwargs \['n_local'\] are not arguments of view recipe 'asymmetric_cifar'"):
        fit(tmp_path, "--data.views", "auto", "--model.class_path", "mvssl_lightning.methods.MEC",
            "--data.view_kwargs", "{n_local: 2}", "--trainer.max_steps", "2")
    last = torch.load(tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["mvssl"]["class_path"] == "mvssl_lightning.methods.mec.MEC" and last["global_step"] == 2

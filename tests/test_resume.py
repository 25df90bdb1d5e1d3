"""Checkpoint and resume: a tiny MVEB on the embedded data with the online probe.

Run 1 trains 4 steps and writes ``last.ckpt``; its in-memory state after training (model, optimiser,
scheduler, probe) is the reference.  Run 2 is a fresh Trainer, module and probe resumed with
``ckpt_path``: at ``on_train_start`` everything must equal that reference, and it must finish at step 8.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mvssl_lightning import MVEB, MultiViewDataModule, OnlineLinearProbe

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def tiny_mveb() -> MVEB:
    return MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, lr=0.3, warmup_steps=1)


def datamodule() -> MultiViewDataModule:
    return MultiViewDataModule(
        dataset="default", views="mveb_multicrop_cifar", view_kwargs={"n_local": 2}, batch_size=16,
        train_subset=64, test_subset=32, num_workers=0,
    )


def trainer(tmp_path, max_steps, callbacks) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=1, num_sanity_val_steps=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def assert_nested_equal(a, b, path="") -> None:
    """Exact equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        assert torch.equal(a.cpu(), b.cpu()), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            assert_nested_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def clone_state(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone_state(v) for v in x)
    return x


class AtResumeStart(pl.Callback):
    """Captures the resumed run's state at ``on_train_start``."""

    def __init__(self, probe: OnlineLinearProbe) -> None:
        self.probe = probe
        self.seen = None

    def on_train_start(self, trainer, pl_module):
        self.seen = {
            "global_step": trainer.global_step,
            "model": clone_state(pl_module.state_dict()),
            "optimizer": clone_state(trainer.optimizers[0].state_dict()),
            "sched_last_epoch": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "probe": clone_state(self.probe.state_dict()),
        }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    model = tiny_mveb()
    probe = OnlineLinearProbe(num_classes=10)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, 4, [probe, ckpt])
    t.fit(model, datamodule=datamodule())
    assert t.global_step == 4
    reference = {
        "model": clone_state(model.state_dict()),
        "optimizer": clone_state(t.optimizers[0].state_dict()),
        "sched_last_epoch": t.lr_scheduler_configs[0].scheduler.last_epoch,
        "probe": clone_state(probe.state_dict()),
    }
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file()
    return tmp_path, last, model, reference


def test_checkpoint_loads_with_weights_only(first_run):
    _, last, _, ref = first_run
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4
    assert_nested_equal(ref["model"], ckpt["state_dict"])
    assert any(k.startswith("teacher_backbone.") for k in ckpt["state_dict"])
    # the momentum buffers are really there (LARS with momentum 0.9, one per trainable parameter)
    opt_state = ckpt["optimizer_states"][0]["state"]
    assert len(opt_state) == len(ref["optimizer"]["state"]) > 0
    assert all("momentum_buffer" in s for s in opt_state.values())
    assert_nested_equal(ref["optimizer"], ckpt["optimizer_states"][0])
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 4 == ref["sched_last_epoch"]
    probe_states = [v for k, v in ckpt["callbacks"].items() if "OnlineLinearProbe" in k]
    assert len(probe_states) == 1
    assert probe_states[0]["head"] and probe_states[0]["optimizer"]["state"]  # trained, with momentum
    assert_nested_equal(ref["probe"], probe_states[0])


def test_resume_restores_everything_and_continues(first_run):
    tmp_path, last, trained, ref = first_run
    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    model = tiny_mveb()
    assert not torch.equal(model.backbone.conv1.weight, ref["model"]["backbone.conv1.weight"])
    probe = OnlineLinearProbe(num_classes=10)
    spy = AtResumeStart(probe)
    t = trainer(tmp_path, 8, [probe, spy, ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)])
    t.fit(model, datamodule=datamodule(), ckpt_path=str(last))

    seen = spy.seen
    assert seen is not None and seen["global_step"] == 4
    assert_nested_equal(ref["model"], seen["model"])  # online, teacher, BN buffers
    assert_nested_equal(ref["optimizer"], seen["optimizer"])  # momentum buffers, lrs, groups
    assert seen["sched_last_epoch"] == ref["sched_last_epoch"] == 4
    assert_nested_equal(ref["probe"], seen["probe"])

    assert t.global_step == 8
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 8
    # training went on from the restored weights
    assert not torch.equal(model.backbone.conv1.weight, ref["model"]["backbone.conv1.weight"])
    assert probe.head is not None


def test_load_from_checkpoint_gives_identical_outputs(first_run):
    _, last, trained, ref = first_run
    loaded = MVEB.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    assert loaded.hparams.proj_hidden_dim == 32 and loaded.hparams.proj_output_dim == 16
    assert_nested_equal(ref["model"], loaded.state_dict())
    trained.eval(), loaded.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
        assert torch.equal(loaded.projector(loaded(x)), trained.projector(trained(x)))


def test_gpu_views_generator_is_checkpointed_and_restored(tmp_path):
    # the device views' random stream is part of the checkpoint (loads with weights_only) and the
    # resumed run continues from it
    def dm():
        return MultiViewDataModule(dataset="default", views="two_views_cifar", batch_size=16, train_subset=64,
                                   test_subset=32, num_workers=0, gpu_views=True)

    first = dm()
    t = trainer(tmp_path, 2, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    t.fit(tiny_mveb(), datamodule=first)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    saved = ckpt["MultiViewDataModule"]["view_generator"]
    assert torch.equal(saved, first.device_stage.generator().get_state())

    resumed = dm()
    t = trainer(tmp_path, 2, [])  # already at max_steps: restores, trains nothing
    t.fit(tiny_mveb(), datamodule=resumed, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(resumed.device_stage.generator().get_state(), saved)

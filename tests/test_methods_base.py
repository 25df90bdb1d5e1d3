"""``SiameseModule`` behaviour through MVEB (tiny ResNet-18 + 32/16 projector on 16 px random images).

References: hand-written closed forms (lr scaling, warm-up + cosine, the EMA recursion replayed in
float64 from snapshots of the online weights), an independent torchvision ResNet-18 loaded with the
exported weights, and a second model in the other memory format.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvssl_lightning import MVEB, export_torchvision_state_dict

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FEAT_DIM = 512  # resnet18


# ----------------------------------------------------------------------------- helpers


def tiny_mveb(**kwargs) -> MVEB:
    kwargs.setdefault("backbone", "resnet18")
    kwargs.setdefault("proj_hidden_dim", 32)
    kwargs.setdefault("proj_output_dim", 16)
    return MVEB(**kwargs)


class RandomViews(Dataset):
    """``([view_0, ..., view_{V-1}], label)`` with fixed random images; view sizes per position."""

    def __init__(self, n: int, sizes=(16, 16), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.views = [torch.randn(n, 3, s, s, generator=g) for s in sizes]
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return [v[i] for v in self.views], self.y[i]


class TinyDataModule(pl.LightningDataModule):
    def __init__(self, n: int, batch_size: int, sizes=(16, 16)) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.dataset = RandomViews(n, sizes)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, drop_last=True)


def make_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def torchvision_twin(model: MVEB) -> nn.Module:
    """An independent torchvision ResNet-18 holding the model's exported backbone weights."""
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(export_torchvision_state_dict(model.backbone), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    net.fc = nn.Identity()
    return net


class Record(pl.Callback):
    def __init__(self) -> None:
        self.initial_lrs = None
        self.start_lrs = None
        self.step_lrs = []  # (global_step, [lr of every group]) at each optimiser step

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.initial_lrs = [g["initial_lr"] for g in opt.param_groups]
        self.start_lrs = [g["lr"] for g in opt.param_groups]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.step_lrs.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups]))


# ----------------------------------------------------------------------------- lr scaling


@pytest.mark.parametrize(
    "scaling, expected",
    [
        ("linear", 0.4 * (8 * 1 * 2) / 256),  # lr * B_global / 256, B_global = 8 x 1 process x 2 accumulated
        ("sqrt", 0.4 * math.sqrt(16 / 256)),  # = 0.1
        ("none", 0.4),
    ],
)
def test_lr_scaling_uses_global_batch(scaling, expected):
    model = tiny_mveb(optimizer="sgd", lr=0.4, lr_scaling=scaling, warmup_steps=0)
    rec = Record()
    trainer = make_trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[rec])
    trainer.fit(model, datamodule=TinyDataModule(n=16, batch_size=8))
    assert len(rec.initial_lrs) == 2  # decay + no-decay groups
    for lr in rec.initial_lrs + rec.start_lrs:  # no warm-up: step 0 runs at the peak
        assert lr == pytest.approx(expected, rel=1e-12)
    assert len(rec.step_lrs) == 1 and trainer.global_step == 1


def test_lr_scaling_with_explicit_batch_size_and_no_datamodule():
    model = tiny_mveb(optimizer="sgd", lr=0.4, batch_size=8, warmup_steps=0)
    rec = Record()
    trainer = make_trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[rec])
    trainer.fit(model, train_dataloaders=DataLoader(RandomViews(16), batch_size=8))
    assert rec.initial_lrs[0] == pytest.approx(0.4 * 16 / 256, rel=1e-12)


def test_lr_scaling_missing_batch_size_raises():
    model = tiny_mveb(optimizer="sgd", lr=0.4, lr_scaling="linear")
    trainer = make_trainer(max_steps=1)
    with pytest.raises(ValueError, match="batch size"):
        trainer.fit(model, train_dataloaders=DataLoader(RandomViews(16), batch_size=8))


@pytest.mark.parametrize("scaling, expected", [("linear", 0.3 * 512 / 256), ("sqrt", 0.3 * math.sqrt(2.0))])
def test_lr_scaling_counts_processes(scaling, expected):
    """B_global = 32 per process x 8 processes x 2 accumulated = 512 (a stand-in trainer; no DDP on CPU)."""
    from types import SimpleNamespace

    model = tiny_mveb(lr=0.3, lr_scaling=scaling)
    model._trainer = SimpleNamespace(
        world_size=8, accumulate_grad_batches=2, datamodule=SimpleNamespace(batch_size=32)
    )
    assert model.scaled_lr() == pytest.approx(expected, rel=1e-12)


def test_invalid_lr_scaling_rejected():
    with pytest.raises(ValueError, match="lr_scaling"):
        tiny_mveb(lr_scaling="quadratic")


# ----------------------------------------------------------------------------- the applied schedule


@pytest.mark.parametrize("accumulate, over_total", [(1, True), (2, False)])
def test_applied_lr_schedule_matches_closed_form(accumulate, over_total):
    # 2 epochs of 4 optimiser steps: T = 8; warm-up 1 epoch = 4 steps
    batch = 8
    n = 4 * accumulate * batch
    model = tiny_mveb(
        optimizer="lars", lr=0.2, lr_scaling="none", warmup_epochs=1.0, cosine_over_total=over_total
    )  # MVEB defaults: warm-up from 1e-3 lr, cosine to 1e-3 lr
    rec = Record()
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=accumulate, callbacks=[rec])
    trainer.fit(model, datamodule=TinyDataModule(n=n, batch_size=batch))
    total, warm = 8, 4
    assert trainer.estimated_stepping_batches == total
    assert [s for s, _ in rec.step_lrs] == list(range(total))
    for step, lrs in rec.step_lrs:
        if step < warm:
            factor = 1e-3 + 0.999 * step / warm
        else:
            span = total if over_total else total - warm
            factor = 1e-3 + 0.999 * 0.5 * (1 + math.cos(math.pi * (step - warm) / span))
        for lr in lrs:
            assert lr == pytest.approx(0.2 * factor, rel=1e-9), (step, lrs)
    assert rec.step_lrs[0][1][0] == pytest.approx(0.2e-3)
    assert rec.step_lrs[warm][1][0] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- EMA teacher


class EMASnapshots(pl.Callback):
    """Snapshots of the online weights after every optimiser step; stops after one epoch."""

    def __init__(self) -> None:
        self.teacher0 = None
        self.online = []  # list of {name: tensor} after optimiser steps 1, 2, ...
        self.batches = 0
        self.last_step = 0

    def on_train_start(self, trainer, pl_module):
        self.teacher0 = _teacher_params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        if trainer.global_step != self.last_step:
            assert trainer.global_step == self.last_step + 1
            self.last_step = trainer.global_step
            self.online.append(_online_params(pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True  # stop half-way, so that T is larger than the steps done


def _online_params(m: MVEB) -> dict:
    out = {f"backbone.{k}": v for k, v in m.backbone.named_parameters()}
    out.update({f"projector.{k}": v for k, v in m.projector.named_parameters()})
    return {k: v.detach().double().clone() for k, v in out.items()}


def _teacher_params(m: MVEB) -> dict:
    out = {f"backbone.{k}": v for k, v in m.teacher_backbone.named_parameters()}
    out.update({f"projector.{k}": v for k, v in m.teacher_projector.named_parameters()})
    return {k: v.detach().double().clone() for k, v in out.items()}


def test_ema_teacher_once_per_optimizer_step_with_accumulation():
    torch.manual_seed(0)
    base = 0.5  # a small base momentum makes every update visible
    model = tiny_mveb(
        optimizer="sgd", lr=0.5, lr_scaling="none", warmup_steps=0, min_lr_factor=1.0,
        weight_decay=0.0, base_momentum=base,
    )
    snaps = EMASnapshots()
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[snaps])
    # 6 batches per epoch -> 3 optimiser steps per epoch, T = 6; we stop after the first epoch
    trainer.fit(model, datamodule=TinyDataModule(n=48, batch_size=8, sizes=(16, 16, 12)))
    total = trainer.estimated_stepping_batches
    assert total == 6
    assert snaps.batches == 6 and trainer.global_step == 3 and len(snaps.online) == 3

    # replay: teacher_t = m_t teacher_{t-1} + (1 - m_t) online_t, t = 1, 2, 3
    ref = dict(snaps.teacher0)
    for t, online in enumerate(snaps.online, start=1):
        m = 1 - (1 - base) * (math.cos(math.pi * t / total) + 1) / 2
        ref = {k: m * ref[k] + (1 - m) * online[k] for k in ref}
    got = _teacher_params(model)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)

    # the test can fail: the teacher moved, and per-batch updates would give something else
    moved = max((got[k] - snaps.teacher0[k]).abs().max().item() for k in got)
    assert moved > 1e-3
    per_batch = dict(snaps.teacher0)
    for t in range(1, 7):
        m = 1 - (1 - base) * (math.cos(math.pi * t / total) + 1) / 2
        online = snaps.online[(t - 1) // 2]
        per_batch = {k: m * per_batch[k] + (1 - m) * online[k] for k in per_batch}
    assert max((got[k] - per_batch[k]).abs().max().item() for k in got) > 1e-4

    # BN buffers are the teacher's own: it ran on the 2 globals of each of the 6 batches, the online
    # network on all 3 views
    assert int(model.teacher_backbone.bn1.num_batches_tracked) == 2 * 6
    assert int(model.backbone.bn1.num_batches_tracked) == 3 * 6
    assert not torch.allclose(model.teacher_backbone.bn1.running_mean, model.backbone.bn1.running_mean)

    # the teacher is frozen and not optimised
    teacher = list(model.teacher_backbone.parameters()) + list(model.teacher_projector.parameters())
    assert teacher and all(not p.requires_grad for p in teacher)
    opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in teacher}
    assert opt_ids == {id(p) for p in model.parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- input checks


def _views(n_views=2, batch=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n_views)]


def test_one_view_is_a_value_error():
    model = tiny_mveb()
    with pytest.raises(ValueError, match="views"):
        model.training_step((_views(1), torch.zeros(8, dtype=torch.long)), 0)


def test_batch_not_a_list_is_a_type_error():
    model = tiny_mveb()
    with pytest.raises(TypeError):
        model.training_step((_views(1)[0], torch.zeros(8, dtype=torch.long)), 0)


def test_nan_pixels_raise_floating_point_error():
    model = tiny_mveb()
    views = _views(2)
    views[1][3, 0, 5, 5] = float("nan")
    with pytest.raises(FloatingPointError, match="global step 0"):
        model.training_step((views, torch.zeros(8, dtype=torch.long)), 0)


def test_non_finite_term_names_step_and_term(monkeypatch):
    model = tiny_mveb(optimizer="sgd", lr=0.1, lr_scaling="none", warmup_steps=0)
    original = model.compute_loss
    calls = []

    def patched(views):
        loss, terms, features = original(views)
        calls.append(1)
        if len(calls) == 3:  # third batch = global step 2
            terms = dict(terms, entropy_surrogate=torch.tensor(float("inf")))
            loss = loss + terms["entropy_surrogate"]
        return loss, terms, features

    monkeypatch.setattr(model, "compute_loss", patched)
    trainer = make_trainer(max_steps=5)
    with pytest.raises(FloatingPointError, match="global step 2") as info:
        trainer.fit(model, datamodule=TinyDataModule(n=40, batch_size=8))
    assert "entropy_surrogate" in str(info.value)
    assert "non-finite terms: ['entropy_surrogate']" in str(info.value)


# ----------------------------------------------------------------------------- feature hand-off


def test_training_step_returns_loss_and_detached_first_view_features():
    torch.manual_seed(0)
    model = tiny_mveb()
    model.train()
    views = _views(3)
    twin = torchvision_twin(model).train()  # same BN mode: batch statistics
    out = model.training_step((views, torch.zeros(8, dtype=torch.long)), 0)
    assert set(out) == {"loss", "features"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    f = out["features"]
    assert f.shape == (8, FEAT_DIM) and model.feat_dim == FEAT_DIM
    assert not f.requires_grad and f.grad_fn is None
    with torch.no_grad():
        expected = twin(views[0])
        other = twin(views[1])
    torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(f, other, atol=1e-3)  # really the first view


def test_validation_step_returns_features_and_targets():
    torch.manual_seed(0)
    model = tiny_mveb()
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16) * 2 + 1)
    model.eval()
    twin = torchvision_twin(model).eval()
    x, y = torch.randn(5, 3, 16, 16), torch.tensor([0, 3, 1, 9, 2])
    with torch.no_grad():
        out = model.validation_step((x, y), 0)
        expected = twin(x)
    assert out["features"].shape == (5, FEAT_DIM)
    torch.testing.assert_close(out["features"], expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out["targets"], y)


def test_channels_last_gives_the_same_loss():
    torch.manual_seed(0)
    ref = tiny_mveb(channels_last=False)
    cl = tiny_mveb(channels_last=True)
    cl.load_state_dict(ref.state_dict())
    assert cl.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ref.train(), cl.train()
    views = _views(3, seed=3)
    y = torch.zeros(8, dtype=torch.long)
    out_ref = ref.training_step((views, y), 0)
    out_cl = cl.training_step((views, y), 0)
    torch.testing.assert_close(out_cl["loss"], out_ref["loss"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_cl["features"], out_ref["features"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- export


def test_backbone_export_loads_into_torchvision():
    torch.manual_seed(0)
    model = tiny_mveb()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32) + 0.5)
        for p in model.backbone.parameters():  # zero-init residuals would hide mismatches
            p.add_(0.05 * torch.randn_like(p))
    state = export_torchvision_state_dict(model.backbone)
    assert all(v.device.type == "cpu" and not v.requires_grad for v in state.values())
    net = torchvision.models.resnet18()
    result = net.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    net.fc = nn.Identity()
    model.eval(), net.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)
    # an exported copy, not a view of the live weights
    before = state["conv1.weight"].clone()
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
    assert torch.equal(state["conv1.weight"], before)


def test_warmup_epochs_respected_when_training_by_max_steps():
    # 4 optimiser steps per epoch, trained by max_steps only: warm-up of 1 epoch = 4 steps
    model = tiny_mveb(optimizer="sgd", lr=0.2, lr_scaling="none", warmup_epochs=1.0)
    rec = Record()
    trainer = make_trainer(max_steps=8, callbacks=[rec])
    trainer.fit(model, datamodule=TinyDataModule(n=32, batch_size=8))
    lrs = [lrs[0] for _, lrs in rec.step_lrs]
    assert lrs[0] == pytest.approx(0.2e-3)  # warm-up starts at 1e-3 lr
    assert lrs[2] == pytest.approx(0.2 * (1e-3 + 0.999 * 2 / 4))


def test_compile_switch_compiles_backbone_and_teacher_in_place():
    model = tiny_mveb(compile=True)
    names_before = set(model.state_dict())
    model.configure_model()  # what the Trainer calls before fit
    for module in (model.backbone, model.teacher_backbone):
        assert module._compiled_call_impl is not None
    assert model.projector._compiled_call_impl is None  # only backbone-type modules
    assert set(model.state_dict()) == names_before  # checkpoints keep plain parameter names
    eager = tiny_mveb()
    eager.configure_model()
    assert eager.backbone._compiled_call_impl is None


# ----------------------------------------------------------------------------- constructor arguments


#: per registry name (``METHODS``), base settings its official recipe fixes (read from each method's
#: docstring: the ER methods' are those of SimCLR / BYOL / DINO / SwAV's ImageNet recipes)
OFFICIAL_SETTINGS = {
    "mveb": dict(optimizer="lars", lr=0.3, weight_decay=1e-6, warmup_start_factor=1e-3, cosine_over_total=True),
    "mec": dict(optimizer="sgd", lr=0.5, weight_decay=1e-5, exclude_bias_and_norm=False),
    "amdim": dict(backbone="amdim", optimizer="adam", lr=2e-4, lr_scaling="none", betas=(0.8, 0.999)),
    "infomin": dict(optimizer="sgd", lr=0.03, weight_decay=1e-4, zero_init_residual=False, min_lr_factor=1e-3),
    "er_simclr": dict(optimizer="lars", lr=0.3, weight_decay=1e-6),
    "er_byol": dict(optimizer="lars", lr=0.2, weight_decay=1.5e-6),
    "er_dino": dict(optimizer="lars", lr=0.3, weight_decay=1e-6),
    "er_swav": dict(optimizer="lars", lr=0.3, weight_decay=1e-6),
}


def test_every_method_signature_lists_every_setting_with_its_recipe_default():
    import inspect

    from mvssl_lightning import SiameseModule
    from mvssl_lightning.methods import METHODS

    assert set(OFFICIAL_SETTINGS) == set(METHODS), "add the new method's official settings to OFFICIAL_SETTINGS"
    base = {n for n in inspect.signature(SiameseModule.__init__).parameters if n != "self"}
    for method, expected in OFFICIAL_SETTINGS.items():
        cls = METHODS[method]
        params = inspect.signature(cls).parameters
        assert base <= set(params), cls.__name__  # every base setting is visible to LightningCLI
        assert "kwargs" not in params
        for name, value in expected.items():
            assert params[name].default == value, (cls.__name__, name)


def test_constructor_fills_recipe_defaults_and_saves_the_complete_hyperparameters():
    from mvssl_lightning import MEC

    model = MEC(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8, lr=0.1)
    assert model.optimizer_name == "sgd" and model.lr == 0.1 and model.weight_decay == 1e-5
    assert model.hparams["optimizer"] == "sgd" and model.hparams["lr"] == 0.1
    assert model.hparams["pred_hidden_dim"] == 8 and model.hparams["exclude_bias_and_norm"] is False
    with pytest.raises(TypeError, match="unexpected keyword argument 'lrr'"):
        MEC(backbone="resnet18", lrr=0.1)


def test_lightningcli_validates_closed_choices_and_shows_recipe_defaults(capsys):
    from mvssl_lightning.cli import run_cli

    base = ["fit", "--model", "mvssl_lightning.methods.MEC", "--data.dataset", "default"]
    with pytest.raises(SystemExit):
        run_cli([*base, "--print_config"])
    printed = capsys.readouterr().out
    assert "optimizer: sgd" in printed and "lr: 0.5" in printed and "loss_scaling: code" in printed
    with pytest.raises(SystemExit) as error:
        run_cli([*base, "--model.optimizer", "adagrad"])
    assert error.value.code != 0
    assert "lars" in capsys.readouterr().err  # the allowed values are listed

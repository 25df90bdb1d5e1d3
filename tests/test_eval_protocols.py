"""Evaluation protocols, round 2 (issue 26): AMDIM's BatchNorm modes and re-estimation against a float64 hand
computation, AMDIM's MLP classifier and loss, and every protocol config of this round run end to end with
``fast_dev_run`` on the embedded data.

The hand-computed case: a backbone ``x -> BN(W mean_pixels(x) + b)`` with one ``BatchNorm1d``, whose pre-BN
features and BatchNorm statistics are computed here in float64 from the images, following ``torch.nn.BatchNorm1d``'s
documented semantics (batch mean, biased variance to normalise, unbiased variance into the running average,
momentum 0.1) and AMDIM's ``utils.py`` ``_warmup_batchnorm`` (N batches, train mode, no reset).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from mvssl_lightning.evaluation import FineTune, LabeledDataModule, LinearEval
from mvssl_lightning.evaluation.classifiers import amdim_mlp_classifier, amdim_xent
from mvssl_lightning.evaluation.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "configs" / "eval"
EPS, MOMENTUM = 1e-5, 0.1


class TinyBN(nn.Module):
    """``BN(W mean_pixels(x) + b)``: one BatchNorm1d with non-trivial running statistics and affine parameters."""

    feat_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
            self.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
            self.bn.weight.copy_(torch.tensor([1.5, 0.5, -1.0, 2.0]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x.mean(dim=(2, 3))))


def _pre_bn(model: LinearEval, images: torch.Tensor) -> torch.Tensor:
    """The pre-BN features in float64, from the images and the linear layer's weights."""
    lin = model.backbone.linear
    return images.double().mean(dim=(2, 3)) @ lin.weight.double().T + lin.bias.double()


def _normalise(a: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    return (a - mean) / torch.sqrt(var + EPS) * bn.weight.double() + bn.bias.double()


def _ema(mean: torch.Tensor, var: torch.Tensor, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's running averages after ``batches`` (pre-BN features, float64), from ``mean`` / ``var``."""
    for a in batches:
        n = a.shape[0]
        mean = (1 - MOMENTUM) * mean + MOMENTUM * a.mean(dim=0)
        var = (1 - MOMENTUM) * var + MOMENTUM * a.var(dim=0, unbiased=False) * n / (n - 1)
    return mean, var


def _model(cls: type = LinearEval, **kw) -> LinearEval:
    torch.manual_seed(0)
    defaults = dict(backbone=TinyBN(), lr=0.05, lr_scaling="none")
    return cls(None, 10, **{**defaults, **kw})


def _data(**kw) -> LabeledDataModule:
    defaults = dict(dataset="default", batch_size=32, num_workers=0, train_subset=32, val_subset=100,
                    train_transform="none", eval_batch_size=16, shuffle_seed=3)
    return LabeledDataModule(**{**defaults, **kw})


def _trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kw})


def _images(dataset, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
    indices = range(len(dataset)) if indices is None else indices
    pairs = [dataset[i] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])


# ----------------------------------------------------------------------------- encoder_bn
def test_encoder_bn_eval_uses_the_fixed_statistics_and_train_the_batch_statistics():
    data = _data()
    data.setup()
    x, _ = _images(data.train_dataset)
    for mode in ("eval", "train"):
        model = _model(encoder_bn=mode)
        bn = model.backbone.bn
        r_mean, r_var = bn.running_mean.double().clone(), bn.running_var.double().clone()
        model.train()
        assert not model.backbone.linear.training  # frozen: only BatchNorm follows encoder_bn
        assert bn.training is (mode == "train") and model.head.training
        a = _pre_bn(model, x)
        with torch.no_grad():
            got = model.features(x).double()
        if mode == "eval":
            want = _normalise(a, r_mean, r_var, bn)
            assert torch.equal(bn.running_mean.double(), r_mean) and int(bn.num_batches_tracked) == 0
        else:  # batch statistics (biased variance), and the running averages moved once
            want = _normalise(a, a.mean(dim=0), a.var(dim=0, unbiased=False), bn)
            mean, var = _ema(r_mean, r_var, [a])
            assert torch.allclose(bn.running_mean.double(), mean, atol=1e-6)
            assert torch.allclose(bn.running_var.double(), var, atol=1e-6)
        assert torch.allclose(got, want, atol=1e-5)
        model.eval()  # validation: running statistics, whatever encoder_bn says
        assert not bn.training
    # FineTune trains BatchNorm by default (the official fine-tuning scripts), encoder_bn="eval" freezes it
    assert _model(FineTune).backbone.bn.training and not _model(FineTune, encoder_bn="eval").backbone.bn.training


def test_training_in_train_mode_moves_the_running_statistics_as_the_batches_say_and_eval_mode_never():
    # one batch of all 32 training images per epoch, two epochs: two updates with the same batch statistics
    for mode in ("eval", "train"):
        model, data = _model(encoder_bn=mode), _data()
        bn = model.backbone.bn
        r_mean, r_var = bn.running_mean.double().clone(), bn.running_var.double().clone()
        _trainer(max_epochs=2, limit_val_batches=0).fit(model, data)
        if mode == "eval":
            assert torch.equal(bn.running_mean.double(), r_mean) and torch.equal(bn.running_var.double(), r_var)
            continue
        a = _pre_bn(model, _images(data.train_dataset)[0])
        mean, var = _ema(r_mean, r_var, [a, a])
        assert int(bn.num_batches_tracked) == 2
        assert torch.allclose(bn.running_mean.double(), mean, atol=1e-6)
        assert torch.allclose(bn.running_var.double(), var, atol=1e-6)


# ----------------------------------------------------------------------------- re-estimation
def test_reestimation_continues_the_running_averages_on_n_random_test_batches_before_each_validation():
    """fit: sanity check (no re-estimation), one training step in train mode, then 3 batches of 16 test images
    (the first 48 of randperm(100) from seed bn_reestimate_seed + epoch) before the validation; the validation
    top-1 is the float64 classification with those statistics."""
    model, data = _model(encoder_bn="train", bn_reestimate_batches=3, bn_reestimate_seed=5), _data()
    bn = model.backbone.bn
    r_mean, r_var = bn.running_mean.double().clone(), bn.running_var.double().clone()
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=1)
    trainer.fit(model, data)

    x_train, _ = _images(data.train_dataset)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(5 + 0)).tolist()
    test_batches = [_images(data.val_dataset, order[i * 16:(i + 1) * 16])[0] for i in range(3)]
    mean, var = _ema(r_mean, r_var, [_pre_bn(model, x_train)] + [_pre_bn(model, b) for b in test_batches])
    assert int(bn.num_batches_tracked) == 1 + 3  # the sanity check ran no re-estimation
    assert torch.allclose(bn.running_mean.double(), mean, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), var, atol=1e-6)

    x_val, y_val = _images(data.val_dataset)
    f = _normalise(_pre_bn(model, x_val), mean, var, bn)
    logits = f @ model.linear.weight.double().T + model.linear.bias.double()
    assert trainer.callback_metrics["val/top1"].item() == pytest.approx((logits.argmax(1) == y_val).double().mean().item())
    assert model.training and bn.training and not model.backbone.linear.training  # modes restored for training


def test_reestimation_in_validate_and_its_warnings_and_errors():
    model, data = _model(bn_reestimate_batches=10), _data(val_subset=40)
    bn = model.backbone.bn
    with pytest.warns(UserWarning, match="ran 2 of bn_reestimate_batches=10"):
        _trainer().validate(model, data)
    assert int(bn.num_batches_tracked) == 2 and not bn.training  # 40 images: 2 full batches of 16
    with pytest.raises(ValueError, match="cache_features"):
        _model(encoder_bn="train", cache_features=True)
    with pytest.raises(ValueError, match="encoder_bn must be"):
        _model(encoder_bn="batch")
    with pytest.warns(UserWarning, match="no BatchNorm layer"):
        LinearEval(None, 10, backbone=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), encoder_bn="train")


# ----------------------------------------------------------------------------- AMDIM's classifiers
def test_amdim_xent_matches_a_float64_hand_computation():
    torch.manual_seed(1)
    logits, labels = torch.randn(6, 5) * 30, torch.tensor([0, 4, 2, 2, 1, 3])
    lg = logits.double()
    clipped = 10 * torch.tanh(lg / 10)
    log_softmax = clipped - torch.log(torch.exp(clipped).sum(dim=1, keepdim=True))
    want = -log_softmax[torch.arange(6), labels].mean() + 1e-3 * (lg**2).mean()
    assert amdim_xent(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)


def test_amdim_mlp_classifier_has_the_official_layers_and_init():
    torch.manual_seed(0)
    mlp = amdim_mlp_classifier(64, 10)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert mlp[0].p == mlp[4].p == 0.2 and mlp[1].bias is None and mlp[1].out_features == 1024
    bound1, bound2 = 1 / math.sqrt(64), 1 / math.sqrt(1024)
    assert mlp[1].weight.abs().max() <= bound1 and mlp[1].weight.abs().max() > 0.9 * bound1
    assert mlp[5].weight.abs().max() <= bound2 and mlp[5].bias.abs().max() <= bound2
    assert 0 <= mlp[2].weight.min() and mlp[2].weight.max() <= 1 and mlp[2].weight.std() > 0.2  # U(0, 1)
    assert torch.equal(mlp[2].bias, torch.zeros(1024))


def test_the_mlp_classifier_leaves_the_linear_head_training_unchanged():
    heads = []
    for mlp in (False, True):
        model = _model(encoder_bn="train", mlp_classifier=mlp, optimizer="adam", lr=2e-4, loss="amdim_xent",
                       betas=(0.8, 0.999), weight_decay=1e-5)
        trainer = _trainer(max_epochs=3, limit_val_batches=0)
        trainer.fit(model, _data())
        heads.append((model.linear.weight.detach().clone(), model.linear.bias.detach().clone()))
        if mlp:
            assert "train/mlp_loss" in trainer.callback_metrics
    assert torch.equal(heads[0][0], heads[1][0]) and torch.equal(heads[0][1], heads[1][1])


def test_mlp_metrics_are_logged():
    model = _model(mlp_classifier=True)
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, _data())
    metrics = trainer.callback_metrics
    assert {"val/top1", "val/mlp_top1", "val/mlp_top5"} <= set(metrics)
    x, y = _images(trainer.datamodule.val_dataset)
    model.eval()
    with torch.no_grad():
        want = (model.mlp_head(model.features(x)).argmax(1) == y).double().mean().item()
    assert metrics["val/mlp_top1"].item() == pytest.approx(want)


# ----------------------------------------------------------------------------- the configs of this round, end to end
TINY_AMDIM = '{"ndf": 8, "n_rkhs": 32, "depth": 1}'
_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.num_nodes", "1"]
_R18 = ["--model.checkpoint", "null", "--model.backbone", "resnet18", "--model.cifar_stem", "true"]
_SMALL_IMAGES = ["--data.image_size", "32", "--data.resize", "32"]
# config -> (subcommand, the overrides that put it on the embedded 32 px data with a small random backbone)
CONFIG_RUNS = {
    "amdim_linear_cifar10": ("fit", ["--model.checkpoint", "null", "--model.backbone", "amdim", "--model.cifar_stem",
                                     "true", "--model.backbone_kwargs", TINY_AMDIM]),
    "amdim_linear_cifar100": ("fit", ["--model.checkpoint", "null", "--model.backbone", "amdim", "--model.cifar_stem",
                                      "true", "--model.backbone_kwargs", TINY_AMDIM]),
    # 128 px encoders: the 32 px images are upsampled by the configs' own transforms
    "amdim_linear_imagenet128": ("fit", [*_CPU, "--model.checkpoint", "null", "--model.backbone", "amdim",
                                         "--model.cifar_stem", "false", "--model.backbone_kwargs", TINY_AMDIM]),
    "amdim_linear_places205": ("fit", [*_CPU, "--model.checkpoint", "null", "--model.backbone", "amdim",
                                       "--model.cifar_stem", "false", "--model.backbone_kwargs", TINY_AMDIM]),
    # no 64 px AMDIM encoder yet (configs/eval/amdim_linear_stl10.yaml says so): a ResNet-18 on its 64 px images
    "amdim_linear_stl10": ("fit", ["--model.checkpoint", "null", "--model.backbone", "resnet18",
                                   "--model.cifar_stem", "false"]),
    "mveb_knn_r50": ("validate", [*_CPU, *_R18, *_SMALL_IMAGES]),
    "infomin_linear_r50": ("fit", [*_CPU, *_R18, *_SMALL_IMAGES]),
    **{f"semisup_{src}_{pct}pct_r50": ("fit", [*_CPU, *_R18, *_SMALL_IMAGES, "--data.label_list", "null",
                                                "--trainer.sync_batchnorm", "false"])
       for src in ("vicreg", "swav") for pct in (1, 10)},
}


@pytest.mark.parametrize("name", sorted(CONFIG_RUNS))
def test_the_protocol_configs_run_with_fast_dev_run_on_the_embedded_data(name, tmp_path, one_thread):
    subcommand, overrides = CONFIG_RUNS[name]
    cli = run_cli([
        subcommand, "--config", str(EVAL / f"{name}.yaml"), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--model.num_classes", "10", "--data.dataset", "default",
        "--data.data_dir", "null", "--data.num_workers", "0", "--data.batch_size", "8", "--data.eval_batch_size", "8",
        "--data.train_subset", "16", "--data.val_subset", "16", *overrides,
    ])
    metrics = cli.trainer.callback_metrics
    assert ("knn/top1" if subcommand == "validate" else "val/top1") in metrics
    init = cli.config[subcommand]["model"]["init_args"]
    if name.startswith("amdim_"):  # the official mode: BatchNorm on each batch, re-estimated before each test
        assert init["encoder_bn"] == "train" and init["bn_reestimate_batches"] == 50 and init["mlp_classifier"]
        assert init["loss"] == "amdim_xent" and "val/mlp_top1" in metrics
        if init["backbone"] == "amdim":  # r1's BatchNorm: one training batch, then one re-estimation batch
            assert int(cli.model.backbone.to_1x1[-1].num_batches_tracked) == 2


def test_the_protocol_configs_hold_the_official_values(capsys):
    """The values the headers cite, read back through the CLI (so a typo in a key fails too)."""
    want = {  # config: {dotted key: value}
        "amdim_linear_cifar100": {"model.milestones": [81, 111], "trainer.max_epochs": 120, "model.num_classes": 100},
        "amdim_linear_stl10": {"model.milestones": [81, 111], "trainer.max_epochs": 120, "data.image_size": 64},
        "amdim_linear_places205": {"model.milestones": [8, 13], "trainer.max_epochs": 15, "model.num_classes": 205},
        "mveb_knn_r50": {"model.k": 200, "model.temperature": 0.1, "data.resize": 256, "data.knn_bank": True},
        "infomin_linear_r50": {"data.randaugment": True, "data.crop_scale": [0.2, 1.0]},
        "semisup_vicreg_1pct_r50": {"model.backbone_lr": 0.03, "model.lr": 0.08, "model.schedule": "cosine"},
        "semisup_vicreg_10pct_r50": {"model.backbone_lr": 0.01, "model.lr": 0.1, "model.schedule": "cosine"},
        "semisup_swav_1pct_r50": {"model.backbone_lr": 0.02, "model.lr": 5.0, "model.milestones": [12, 16],
                                  "trainer.sync_batchnorm": True, "model.head_init": "default"},
        "semisup_swav_10pct_r50": {"model.backbone_lr": 0.01, "model.lr": 0.2, "model.milestones": [12, 16],
                                   "trainer.sync_batchnorm": True, "model.head_init": "default"},
    }
    for name, values in want.items():
        subcommand = "validate" if "knn" in name else "fit"
        with pytest.raises(SystemExit):
            run_cli([subcommand, "--config", str(EVAL / f"{name}.yaml"), "--print_config"])
        cfg = yaml.safe_load(capsys.readouterr().out)
        for key, value in values.items():
            section, field = key.split(".")
            got = cfg["model"]["init_args"][field] if section == "model" else cfg[section][field]
            assert got == value, (name, key, got)
        if "semisup" in name:
            assert cfg["data"]["label_list"].endswith("percent.txt") and cfg["results"]["report"] == "best"
        assert "docs/protocols.md" in (EVAL / f"{name}.yaml").read_text()


def test_the_protocol_table_names_every_eval_config():
    table = (REPO / "docs" / "protocols.md").read_text()
    missing = [c.name for c in sorted(EVAL.glob("*.yaml")) if f"`{c.name}`" not in table]
    assert not missing, f"docs/protocols.md has no row for {missing}"

"""Bring your own encoder: timm and torchvision models by name, or any ``nn.Module``, under every method.

References are the libraries themselves: a timm backbone must give exactly the features of
``timm.create_model(<name>, num_classes=0)`` loaded with its weights, a torchvision one those of the
torchvision model with its classifier replaced by ``nn.Identity``; feature dimensions are checked against
the models' own attributes; each method trains two optimiser steps on each kind of backbone.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvssl_lightning.methods import AMDIM, ERDINO, METHODS, MVEB, InfoMin
from mvssl_lightning.models.backbones import build_backbone
from mvssl_lightning.models.inspection import BackboneOutputError, feature_dim

pytestmark = pytest.mark.usefixtures("one_thread")

#: a ViT with neither BatchNorm nor a conv stem; dynamic size: the multi-crop methods' 16 px local crops
TINY_VIT = dict(backbone="timm:vit_tiny_patch16_224", backbone_kwargs=dict(
    img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True))
TINY_CONVNEXT = dict(backbone="timm:convnext_atto", backbone_kwargs=dict(dims=(8, 8, 16, 16), depths=(1, 1, 1, 1)))

#: tiny heads per method (AMDIM is tied to its own encoder: test_amdim_refuses_a_foreign_encoder)
HEADS = {
    "mveb": dict(proj_hidden_dim=8, proj_output_dim=8),
    "mec": dict(proj_hidden_dim=8, proj_output_dim=8, pred_hidden_dim=4),
    "infomin": dict(proj_hidden_dim=8, proj_output_dim=8, queue_size=16, jigsaw=False),
    "er_simclr": dict(proj_hidden_dim=8, proj_output_dim=8),
    "er_byol": dict(proj_hidden_dim=8, proj_output_dim=8, pred_hidden_dim=8),
    "er_dino": dict(head_hidden_dim=8, bottleneck_dim=4, output_dim=10),
    "er_swav": dict(proj_hidden_dim=8, proj_output_dim=8, n_prototypes=6),
}


class UserEncoder(nn.Module):
    """A user's own encoder: no BatchNorm, no attribute telling its width, pooled output."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(), nn.GroupNorm(3, width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Views(Dataset):
    """``n`` samples of two ``side`` px views (+ two ``side / 2`` px local crops for multi-crop methods)."""

    def __init__(self, n: int, local: bool, side: int = 32) -> None:
        self.n, self.local, self.side = n, local, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        views = [torch.randn(3, self.side, self.side, generator=g) for _ in range(2)]
        if self.local:
            views += [torch.randn(3, self.side // 2, self.side // 2, generator=g) for _ in range(2)]
        return views, -1


def test_every_method_but_amdim_has_tiny_heads():
    assert set(HEADS) == set(METHODS) - {"amdim"}


@pytest.mark.parametrize("kind", ["vit", "convnext", "module"])
@pytest.mark.parametrize("name", list(HEADS))
def test_method_trains_two_steps_on_a_foreign_backbone(name, kind):
    cls = METHODS[name]
    spec = {"vit": TINY_VIT, "convnext": TINY_CONVNEXT, "module": dict(backbone=UserEncoder())}[kind]
    torch.manual_seed(0)
    model = cls(**spec, **HEADS[name], lr=0.05, lr_scaling="none", warmup_epochs=0.0)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    side = 64 if kind == "convnext" else 32  # ConvNeXt's total stride is 32
    loader = DataLoader(Views(8, local=cls.max_views is None, side=side), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader)
    assert trainer.global_step == 2
    after = model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the backbone did not train"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_feature_dimension_is_found_and_printed(caplog):
    vit, dim = build_backbone("timm:vit_tiny_patch16_224", **TINY_VIT["backbone_kwargs"])
    assert dim == vit.num_features == 16
    convnext, dim = build_backbone("timm:convnext_atto", **TINY_CONVNEXT["backbone_kwargs"])
    assert dim == 16 and convnext(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
    assert feature_dim(UserEncoder(9), "user") == 9  # by a dry forward: the module states no width
    with caplog.at_level("INFO"):
        model = MVEB(backbone=UserEncoder(), proj_hidden_dim=8, proj_output_dim=8)
    assert model.feat_dim == 12 and "12-d features" in caplog.text
    assert model.hparams["backbone"] == f"module:{UserEncoder.__module__}.UserEncoder"


def test_torchvision_backbones_lose_only_their_classifier():
    for name, dim in [("resnet18", 512), ("convnext_tiny", 768), ("vit_b_16", 768), ("mobilenet_v3_small", 1024)]:
        module, found = build_backbone(f"torchvision:{name}")
        assert found == dim, name
        reference = torchvision.models.get_model(name, weights=None)
        missing, unexpected = reference.load_state_dict(module.state_dict(), strict=False)
        assert not unexpected and len(missing) == 2, (name, missing)  # the removed Linear: weight, bias


@pytest.mark.parametrize("spec", [TINY_VIT, TINY_CONVNEXT], ids=["vit", "convnext"])
def test_timm_weights_load_back_into_timm_with_identical_features(spec):
    name = spec["backbone"].removeprefix("timm:")
    torch.manual_seed(0)
    model = ERDINO(**spec, **HEADS["er_dino"])
    with torch.no_grad():  # weights that are not the initial ones
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = model.backbone.state_dict()
    reference = timm.create_model(name, pretrained=False, num_classes=0, **spec["backbone_kwargs"])
    reference.load_state_dict(state, strict=True)
    with_head = timm.create_model(name, pretrained=False, **spec["backbone_kwargs"])
    missing, unexpected = with_head.load_state_dict(state, strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"head"}
    x = torch.randn(3, 3, 32, 32)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_torchvision_weights_load_back_with_identical_features():
    torch.manual_seed(0)
    model = MVEB(backbone="torchvision:convnext_tiny", proj_hidden_dim=8, proj_output_dim=8).eval()
    reference = torchvision.models.get_model("convnext_tiny", weights=None)
    reference.load_state_dict(model.backbone.state_dict(), strict=False)
    reference.classifier[2] = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)


def test_infomin_skips_shufflebn_on_a_batchnorm_free_key_encoder(caplog):
    with caplog.at_level("INFO"):
        vit = InfoMin(**TINY_VIT, **HEADS["infomin"])
    assert not vit.shuffle_bn and "no BatchNorm" in caplog.text
    resnet = InfoMin(backbone="resnet18", proj_hidden_dim=8, proj_output_dim=8, queue_size=16, jigsaw=False)
    assert resnet.shuffle_bn


def test_teacher_copies_run_without_stochastic_depth():
    model = MVEB(backbone="timm:vit_tiny_patch16_224", backbone_kwargs=dict(
        img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, drop_path_rate=0.3), proj_hidden_dim=8,
        proj_output_dim=8)
    student = [m.drop_prob for m in model.backbone.modules() if hasattr(m, "drop_prob")]
    teacher = [m.drop_prob for m in model.teacher_backbone.modules() if hasattr(m, "drop_prob")]
    assert max(student) == pytest.approx(0.3) and teacher and max(teacher) == 0.0


# ----------------------------------------------------------------------------- bad input: one-line errors
def test_unknown_names_list_close_matches():
    with pytest.raises(ValueError, match=r"unknown timm model 'vit_smal_patch16_224'.*vit_small_patch16_224"):
        build_backbone("timm:vit_smal_patch16_224")
    with pytest.raises(ValueError, match=r"unknown torchvision classification model 'resnet51'.*resnet50"):
        build_backbone("torchvision:resnet51")
    with pytest.raises(ValueError, match=r"unknown backbone 'vit'.*timm:<model name>"):
        build_backbone("vit")


def test_a_module_returning_feature_maps_is_told_how_to_pool():
    maps = nn.Conv2d(3, 8, 3)
    with pytest.raises(BackboneOutputError, match=r"shape \(2, 8, 222, 222\).*AdaptiveAvgPool2d"):
        MVEB(backbone=maps)


def test_cifar_stem_on_a_vit_is_an_error():
    with pytest.raises(ValueError, match=r"cifar_stem applies to the library's ResNets.*img_size: 32"):
        MVEB(**TINY_VIT, cifar_stem=True)


def test_amdim_refuses_a_foreign_encoder():
    with pytest.raises(ValueError, match=r"AMDIM is tied to its own encoder.*timm:vit_tiny_patch16_224"):
        AMDIM(**TINY_VIT)


def test_vit_view_sizes_are_checked_before_the_step():
    fixed = MVEB(backbone="timm:vit_tiny_patch16_224", backbone_kwargs=dict(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2), proj_hidden_dim=8, proj_output_dim=8)
    with pytest.raises(ValueError, match=r"built for 32x32 images but gets a 16x16 view.*dynamic_img_size"):
        fixed._check_views([torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16)])
    dynamic = MVEB(**TINY_VIT, proj_hidden_dim=8, proj_output_dim=8)
    with pytest.raises(ValueError, match=r"patch size 8x8 does not divide a 12x12 view"):
        dynamic._check_views([torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 12, 12)])


# ----------------------------------------------------------------------------- checkpoints, the CLI, evaluation
def _fit_and_save(model, tmp_path, side=32):
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(Views(4, local=type(model).max_views is None, side=side), batch_size=4))
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("spec", [TINY_VIT, dict(backbone="torchvision:mobilenet_v3_small")], ids=["timm", "torchvision"])
def test_linear_eval_rebuilds_a_named_backbone_from_the_checkpoint(spec, tmp_path):
    from mvssl_lightning.evaluation import LinearEval

    torch.manual_seed(0)
    model = MVEB(**spec, proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
    path = _fit_and_save(model, tmp_path)
    evaluation = LinearEval(checkpoint=str(path), num_classes=10)
    assert evaluation.source.backbone == spec["backbone"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(evaluation.features(x), model.eval()(x), rtol=0, atol=0)


def test_a_config_module_backbone_trains_and_evaluates(tmp_path):
    from mvssl_lightning.cli import run_cli
    from mvssl_lightning.evaluation import LinearEval

    encoder = {"class_path": f"{UserEncoder.__module__}.UserEncoder", "init_args": {"width": 6}}
    cli = run_cli([
        "fit", "--config", "configs/quickstart.yaml", "--model", "mvssl_lightning.methods.MVEB",
        "--model.backbone", str(encoder).replace("'", '"'), "--model.proj_hidden_dim", "8",
        "--model.proj_output_dim", "8", "--data.views", "mveb_multicrop_cifar", "--data.view_kwargs", "{n_local: 1}",
        "--data.train_subset", "64", "--data.test_subset", "32", "--data.batch_size", "32", "--data.num_workers", "0",
        "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    assert isinstance(cli.model.backbone, UserEncoder) and cli.model.feat_dim == 6
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    evaluation = LinearEval(checkpoint=checkpoint, num_classes=10)  # rebuilt from the recorded class_path
    assert isinstance(evaluation.backbone, UserEncoder)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(evaluation.features(x), cli.model.eval()(x), rtol=0, atol=0)


def test_a_python_module_backbone_must_be_given_again_to_evaluate(tmp_path):
    from mvssl_lightning.evaluation import LinearEval

    torch.manual_seed(0)
    model = MVEB(backbone=UserEncoder(), proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
    path = _fit_and_save(model, tmp_path)
    with pytest.raises(ValueError, match=r"a Python module \(.*UserEncoder\).*pass that module as backbone"):
        LinearEval(checkpoint=str(path), num_classes=10)
    evaluation = LinearEval(checkpoint=str(path), num_classes=10, backbone=UserEncoder())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(evaluation.features(x), model.eval()(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- ViT options
def test_dino_last_blocks_feature_is_the_normed_class_tokens_concatenated(tmp_path):
    from mvssl_lightning.evaluation import LinearEval

    kwargs = dict(TINY_VIT["backbone_kwargs"], depth=3)
    evaluation = LinearEval(checkpoint=None, num_classes=10, backbone="timm:vit_tiny_patch16_224",
                            backbone_kwargs=kwargs, n_last_blocks=2, avgpool_patchtokens=True)
    assert evaluation.feat_dim == 3 * 16 and evaluation.head[-1].in_features == 48
    vit = evaluation.backbone
    x = torch.randn(2, 3, 32, 32)
    # reference: DINO's get_intermediate_layers, written out on timm's modules
    with torch.no_grad():
        tokens = vit._pos_embed(vit.patch_embed(x))
        outputs = []
        for block in vit.blocks:
            tokens = block(tokens)
            outputs.append(vit.norm(tokens))
        expected = torch.cat([outputs[-2][:, 0], outputs[-1][:, 0], outputs[-1][:, 1:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(evaluation.features(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="need a timm vision transformer"):
        LinearEval(checkpoint=None, num_classes=10, backbone="resnet18", n_last_blocks=4)


def test_finetune_layer_decay_follows_timm():
    from timm.optim import param_groups_layer_decay

    from mvssl_lightning.evaluation import FineTune

    kwargs = dict(TINY_VIT["backbone_kwargs"], depth=3)
    model = FineTune(checkpoint=None, num_classes=10, backbone="timm:vit_tiny_patch16_224", backbone_kwargs=kwargs,
                     backbone_lr=0.1, layer_decay=0.5, lr_scaling="none", weight_decay=0.05)
    groups = model.param_groups()
    reference = param_groups_layer_decay(model.backbone, 0.05, model.backbone.no_weight_decay(), layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups[1:] for p in g["params"]}
    for group in reference:
        for p in group["params"]:
            assert lr_of[id(p)] == pytest.approx(0.1 * group["lr_scale"])
    patch_lr = lr_of[id(model.backbone.patch_embed.proj.weight)]
    assert patch_lr == pytest.approx(0.1 * 0.5 ** 3)  # 3 blocks: the embedding is decayed 3 times
    assert lr_of[id(model.backbone.norm.weight)] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="group_matcher"):
        FineTune(checkpoint=None, num_classes=10, backbone=UserEncoder(), layer_decay=0.5)


def test_weight_decay_schedule_clipping_and_token_exclusion():
    import math

    from mvssl_lightning.core.optim import clip_per_parameter, parameter_groups

    model = MVEB(**TINY_VIT, proj_hidden_dim=8, proj_output_dim=8)
    groups = parameter_groups([model], 0.04, exclude_bias_and_norm=True, exclude_embeddings=True)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.backbone.pos_embed) in no_decay and id(model.backbone.cls_token) in no_decay
    decays = parameter_groups([model], 0.04, exclude_bias_and_norm=True, exclude_embeddings=False)
    assert id(model.backbone.pos_embed) in {id(p) for p in decays[0]["params"]}  # DINO's code decays them
    # per-parameter clipping, against the formula: g * min(1, c / (||g|| + 1e-6))
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0])
    clip_per_parameter(params, 1.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([3.0, 4.0, 0.0]) / (5 + 1e-6))
    torch.testing.assert_close(params[1].grad, torch.tensor([0.1, 0.0]))
    # the weight decay follows DINO's cosine_scheduler per optimiser step: wd_end + (wd - wd_end)(1 + cos(pi t/T))/2
    model = MVEB(**TINY_VIT, proj_hidden_dim=8, proj_output_dim=8, optimizer="adamw", lr=1e-3, lr_scaling="none",
                 weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=0.0)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            group = next(g for g in trainer.optimizers[0].param_groups if g["name"] == "decay")
            seen.append(group["weight_decay"])

    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, callbacks=[Record()],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(Views(16, local=True), batch_size=4))
    expected = [0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert seen == pytest.approx(expected)


def test_the_docs_snippet_runs():
    """docs/backbones.md's Python snippet, as a user would paste it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "docs_snippet"}
    exec(compile(snippet, "docs/backbones.md", "exec"), namespace)
    assert namespace["vit"].feat_dim == 192 and namespace["own"].feat_dim == 64


def test_er_dino_teacher_temperature_warmup_and_last_layer_norm():
    """DINO's schedule: np.concatenate((np.linspace(warmup, final, W), np.ones(E - W) * final)), per epoch."""
    from unittest import mock

    import numpy as np

    model = ERDINO(**TINY_VIT, **HEADS["er_dino"], teacher_temp=0.07, warmup_teacher_temp=0.04,
                   warmup_teacher_temp_epochs=30, norm_last_layer=False)
    expected = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))
    got = []
    for epoch in range(100):
        with mock.patch.object(ERDINO, "current_epoch", new_callable=mock.PropertyMock, return_value=epoch):
            got.append(model.current_teacher_temp())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert model.head.last_layer.weight_g.requires_grad  # norm_last_layer=False: the norm trains
    assert not ERDINO(**TINY_VIT, **HEADS["er_dino"]).head.last_layer.weight_g.requires_grad  # DINO's default


# ----------------------------------------------------------------------------- the command line: one line, exit 2
_QUICK = ["fit", "--config", "configs/quickstart.yaml", "--data.train_subset", "64", "--data.test_subset", "32",
          "--data.batch_size", "16",
          "--data.num_workers", "0", "--trainer.fast_dev_run", "true", "--validate_at_start", "false"]


@pytest.mark.parametrize("extra, message", [
    (["--model.backbone", "timm:vit_smal_patch16_224"], "unknown timm model 'vit_smal_patch16_224'; close matches"),
    (["--model.backbone", "torchvision:resnet51"], "unknown torchvision classification model 'resnet51'"),
    (["--model.backbone", '{"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": 3, "out_channels": 4, '
      '"kernel_size": 3}}'], "not pooled features (B, D): pool it"),
    (["--model.backbone", "timm:vit_tiny_patch16_224", "--model.cifar_stem", "true"], "cifar_stem applies to"),
    (["--model", "mvssl_lightning.methods.AMDIM", "--model.backbone", "timm:vit_tiny_patch16_224"],
     "AMDIM is tied to its own encoder"),
    (["--model.backbone", "timm:vit_tiny_patch16_224", "--model.backbone_kwargs",
      "{img_size: 32, patch_size: 5, embed_dim: 16, depth: 1, num_heads: 2}"], "patch size 5x5 does not divide"),
], ids=["timm-name", "torchvision-name", "feature-maps", "cifar-stem", "amdim", "patch-size"])
def test_bad_backbones_are_one_line_errors_with_exit_2(extra, message, tmp_path, capsys):
    from mvssl_lightning.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*_QUICK, "--trainer.logger.init_args.save_dir", str(tmp_path), *extra])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("mvssl: error:") and message in err[-1], err[-3:]

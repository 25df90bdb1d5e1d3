"""Offline evaluation (``mvssl_lightning.evaluation``, ``mvssl-eval``): every config parses and states its paper's
protocol, checkpoints of every method load, frozen means bit-identical, the cached-features path trains the head
the streaming path trains, label subsets, kNN against a float64 brute force, LARC against a float64 reference,
the schedules against the official loops' formulas, and clear errors for bad input."""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
import yaml
from lightly.utils.lars import LARS
from PIL import Image
from torch import nn

from mvssl_lightning.cli import run_cli as pretrain_cli
from mvssl_lightning.core.optim import LARC
from mvssl_lightning.core.schedules import lr_factor
from mvssl_lightning.evaluation import FineTune, FirstView, KNNEval, LabeledDataModule, LinearEval
from mvssl_lightning.evaluation.cli import run_cli
from mvssl_lightning.methods import AMDIM, METHODS
from mvssl_lightning.models import export_torchvision_state_dict

REPO = Path(__file__).resolve().parents[1]
EVAL_CONFIGS = sorted((REPO / "configs" / "eval").glob("*.yaml"))
QUICK = REPO / "configs" / "eval" / "linear_quickstart.yaml"


def _trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kw})


def _data(**kw) -> LabeledDataModule:
    defaults = dict(dataset="default", batch_size=32, num_workers=0, train_subset=96, val_subset=64, shuffle_seed=3)
    return LabeledDataModule(**{**defaults, **kw})


def _save_method(module: L.LightningModule, path: Path) -> Path:
    """A pre-training checkpoint as ``Trainer.save_checkpoint`` writes it (state_dict + hyper_parameters)."""
    trainer = _trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A quickstart checkpoint after 2 pre-training steps, written by the ``mvssl`` CLI (so its
    hyper_parameters carry ``_class_path``)."""
    out = tmp_path_factory.mktemp("pretrain")
    pretrain_cli([
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0", "--trainer.callbacks",
        "lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true",
        "--data.batch_size", "16", "--data.num_workers", "0", "--model.proj_hidden_dim", "32",
    ])
    (ckpt,) = out.rglob("last.ckpt")
    return ckpt


# ----------------------------------------------------------------------------- configs
# the official scripts' values (repo, file): MVEB lineval.py, MEC main_lincls.py, PyContrast test_options.py,
# amdim-public task_classifiers.py, Barlow Twins evaluate.py + README
PROTOCOLS = {
    "mveb_linear_r50": dict(optimizer="larc", lr=0.1, global_batch=4096, epochs=90, wd=0.0, bn=False,
                            schedule="cosine", trust=0.001),
    "mec_linear_r50": dict(optimizer="larc", lr=0.03, global_batch=4096, epochs=100, wd=0.0, bn=True,
                           schedule="cosine", trust=0.001),
    "infomin_linear_r50": dict(optimizer="sgd", lr=30.0, global_batch=256, epochs=60, wd=0.0, bn=False,
                               schedule="step", milestones=[30, 40, 50], gamma=0.2, crop_scale=[0.2, 1.0]),
    "amdim_linear_imagenet128": dict(optimizer="adam", lr=2e-4, global_batch=480, epochs=30, wd=1e-5, bn=False,
                                     schedule="step", milestones=[16, 26], gamma=0.2),
    "mec_semisup_1pct_r50": dict(optimizer="sgd", lr=0.5, backbone_lr=0.005, global_batch=256, epochs=20, wd=0.0,
                                 bn=False, schedule="cosine"),
    "mveb_semisup_10pct_r50": dict(optimizer="sgd", lr=0.5, backbone_lr=0.005, global_batch=256, epochs=20,
                                   wd=0.0, bn=False, schedule="cosine"),
}


@pytest.mark.parametrize("config", EVAL_CONFIGS, ids=[c.stem for c in EVAL_CONFIGS])
def test_every_eval_config_parses_and_holds_its_protocol(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--model.checkpoint", "dummy.ckpt", "--print_config"])
    assert exit_info.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"].startswith("mvssl_lightning.evaluation.")
    assert cfg["model"]["init_args"]["checkpoint"] == "dummy.ckpt" and "filename" in cfg["results"]
    assert config.read_text().startswith("# "), f"{config.name} starts without its header comment"
    if config.stem not in PROTOCOLS:
        return
    model, trainer, data, want = cfg["model"]["init_args"], cfg["trainer"], cfg["data"], PROTOCOLS[config.stem]
    assert model["optimizer"] == want["optimizer"] and model["lr"] == want["lr"]
    assert model["weight_decay"] == want["wd"] and model["head_batchnorm"] == want["bn"]
    assert model["schedule"] == want["schedule"] and model["schedule_interval"] == "epoch"
    assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] == want["global_batch"]
    assert trainer["max_epochs"] == want["epochs"]
    for key, cfg_key in (("milestones", "milestones"), ("gamma", "gamma"), ("trust", "trust_coefficient"),
                         ("backbone_lr", "backbone_lr")):
        if key in want:
            assert model[cfg_key] == want[key]
    if "crop_scale" in want:
        assert data["crop_scale"] == want["crop_scale"]


# ----------------------------------------------------------------------------- schedules and optimisers
def test_schedules_match_the_official_loops():
    spe = 7  # optimiser steps per epoch
    # MVEB / MEC adjust_learning_rate: lr_e = lr * 0.5 * (1 + cos(pi e / E)), set at the start of epoch e
    for e in range(90):
        for s in (e * spe, e * spe + spe - 1):
            assert lr_factor(s, "cosine", "epoch", spe, 90 * spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * e / 90)))
    # PyContrast adjust_learning_rate(epoch) with 1-indexed epochs: lr * 0.2 ** sum(epoch > [30, 40, 50])
    for e in range(60):
        official = 30.0 * 0.2 ** int(np.sum((e + 1) > np.asarray([30, 40, 50])))
        assert 30.0 * lr_factor(e * spe, "step", "epoch", spe, 60 * spe, [30, 40, 50], 0.2) == pytest.approx(official)
    # amdim-public: MultiStepLR([15, 25], 0.2).step(epoch) after epoch `epoch` (closed form) -> the lr of epoch e
    # is gamma ** bisect_right([15, 25], e - 1); configs/eval/amdim_linear_imagenet128.yaml says [16, 26]
    for e in range(30):
        official = 0.2 ** (bisect_right([15, 25], e - 1) if e > 0 else 0)
        assert lr_factor(e * spe + 3, "step", "epoch", spe, 30 * spe, [16, 26], 0.2) == pytest.approx(official)
    # per-step cosine
    assert lr_factor(5, "cosine", "step", spe, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 20)))


def _larc_reference(params, grads_per_step, lr, momentum, wd, trust, eps=1e-8):
    """apex LARC(clip=False) around torch SGD, in float64 from the formulas."""
    params = [p.double().clone() for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.double().clone()
            pn, gn = p.norm(), g.norm()
            if pn != 0 and gn != 0:
                g = trust * pn / (gn + pn * wd + eps) * (g + wd * p)
            bufs[i] = g.clone() if bufs[i] is None else momentum * bufs[i] + g
            params[i] = p - lr * bufs[i]
    return params


@pytest.mark.parametrize("wd", [0.0, 1e-4])
def test_larc_matches_a_float64_reference_and_lightly_lars_when_decaying(wd):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 4, generator=g), torch.zeros(5)  # a zero bias: no adaptation at its first step
    grads = [[torch.randn(5, 4, generator=g), torch.randn(5, generator=g)] for _ in range(4)]
    ours = [nn.Parameter(weight.clone()), nn.Parameter(bias.clone())]
    opt = LARC(ours, lr=1.6, momentum=0.9, weight_decay=wd, trust_coefficient=0.001)
    for step in grads:
        for p, gr in zip(ours, step):
            p.grad = gr.clone()
        opt.step()
    ref = _larc_reference([weight, bias], grads, 1.6, 0.9, wd, 0.001)
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-6, atol=1e-7)
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after each step
    if wd > 0:  # lightly's LARS adapts only decayed groups; then it is the same update
        theirs = [nn.Parameter(weight.clone()), nn.Parameter(bias.clone())]
        lars = LARS(theirs, lr=1.6, momentum=0.9, weight_decay=wd, trust_coefficient=0.001)
        for step in grads:
            for p, gr in zip(theirs, step):
                p.grad = gr.clone()
            lars.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- loading checkpoints
_R18 = dict(backbone="resnet18")
#: per registry name (``METHODS``), the tiny construction kwargs of the checkpoint-loading test; a method
#: added to ``METHODS`` without an entry fails ``test_every_method_checkpoint_loads_into_linear_eval``
TINY_METHODS = {
    "mveb": dict(**_R18, proj_hidden_dim=16, proj_output_dim=8),
    "mec": dict(**_R18, cifar_stem=True, proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=8),
    "amdim": dict(cifar_stem=True, backbone_kwargs={"ndf": 8, "n_rkhs": 32, "depth": 1}),
    "infomin": dict(**_R18, proj_hidden_dim=16, proj_output_dim=8, queue_size=32),
    "er_simclr": dict(**_R18, proj_hidden_dim=16, proj_output_dim=8),
    "er_byol": dict(**_R18, proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16),
    "er_dino": dict(**_R18, head_hidden_dim=16, bottleneck_dim=8, output_dim=32),
    "er_swav": dict(**_R18, proj_hidden_dim=16, proj_output_dim=8, n_prototypes=16),
}


def _tiny_methods():
    assert set(TINY_METHODS) == set(METHODS), "add the new method's tiny construction kwargs to TINY_METHODS"
    return {name: cls(**TINY_METHODS[name]) for name, cls in METHODS.items()}


def test_every_method_checkpoint_loads_into_linear_eval(tmp_path):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for name, method in _tiny_methods().items():
        with torch.no_grad():  # perturb the BN statistics so that a wrongly loaded backbone shows
            for m in method.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
        ckpt = _save_method(method, tmp_path / f"{name}.ckpt")
        model = LinearEval(str(ckpt), num_classes=10)
        assert model.source.kind == "pretraining" and model.source.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert model.source.backbone == method.hparams["backbone"]
        theirs = method.backbone.state_dict()
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, theirs[k]), f"{name}: {k}"
        method.eval()
        with torch.no_grad():
            expected = method(x)  # SiameseModule.forward: the backbone's pooled features (AMDIM: r1 flattened)
            assert torch.equal(model.features(x), expected), name
        assert model.feat_dim == expected.shape[1] == (32 if isinstance(method, AMDIM) else 512)
        assert model(x).shape == (3, 10)


def test_torchvision_state_dict_round_trip_gives_torchvision_features(tmp_path, pretrained):
    model = LinearEval(str(pretrained), num_classes=10)
    exported = tmp_path / "resnet18.pth"
    torch.save(export_torchvision_state_dict(model.backbone), exported)
    reloaded = LinearEval(str(exported), num_classes=10, backbone="resnet18", cifar_stem=False)
    assert reloaded.source.kind == "torchvision"
    reference = torchvision.models.resnet18()
    missing, unexpected = reference.load_state_dict(torch.load(exported, weights_only=True), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    reference.fc = nn.Identity()
    reference.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.features(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(model.features(x), reference(x), rtol=0, atol=0)
    # a full torchvision state_dict (with fc) loads too: the classifier is dropped
    full = tmp_path / "full.pth"
    torch.save(torchvision.models.resnet18().state_dict(), full)
    assert LinearEval(str(full), num_classes=10, backbone="resnet18").source.kind == "torchvision"


# ----------------------------------------------------------------------------- errors
def test_bad_checkpoints_fail_with_a_clear_message(tmp_path, pretrained):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*no_such.ckpt"):
        LinearEval(str(tmp_path / "no_such.ckpt"), num_classes=10)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt is not a checkpoint readable with torch.load"):
        LinearEval(str(text), num_classes=10)
    r50 = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), r50)
    with pytest.raises(ValueError, match=r"resnet50.pth does not fit the backbone 'resnet18'.*unexpected keys: .*conv3"):
        LinearEval(str(r50), num_classes=10, backbone="resnet18")
    with pytest.raises(ValueError, match="plain state_dict, which does not say its architecture: set backbone"):
        LinearEval(str(r50), num_classes=10)
    cifar = tmp_path / "cifar_stem.pth"
    torch.save(export_torchvision_state_dict(torchvision.models.resnet18()), cifar)
    cifar_sd = torch.load(cifar, weights_only=True)
    cifar_sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(cifar_sd, cifar)
    with pytest.raises(ValueError, match=r"conv1.weight \(64, 3, 3, 3\) in the file.*set cifar_stem=True"):
        LinearEval(str(cifar), num_classes=10, backbone="resnet18")
    with pytest.raises(ValueError, match=r"pre-trained with backbone 'resnet18'.*backbone='resnet50'"):
        LinearEval(str(pretrained), num_classes=10, backbone="resnet50")
    evaluation = _save_method(LinearEval(str(pretrained), num_classes=10), tmp_path / "linear.ckpt")
    with pytest.raises(ValueError, match="linear.ckpt is a checkpoint of an evaluation run .*--ckpt_path"):
        LinearEval(str(evaluation), num_classes=10)
    foreign = _save_method(L.LightningModule(), tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="foreign.ckpt is a Lightning checkpoint but not of an mvssl_lightning"):
        LinearEval(str(foreign), num_classes=10)


def test_num_classes_that_disagree_with_the_data_is_an_error():
    model = LinearEval(None, num_classes=7, backbone="resnet18")
    with pytest.raises(ValueError, match=r"dataset 'default' has 10 classes but LinearEval was built with num_classes=7"):
        _trainer(max_epochs=1).fit(model, _data())


def test_knn_needs_the_bank_loader():
    with pytest.raises(ValueError, match="KNNEval needs two validation loaders.*set data.knn_bank: true"):
        _trainer().validate(KNNEval(None, num_classes=10, backbone="resnet18"), _data(val_subset=16))


def test_cached_features_need_an_augmentation_free_training_transform():
    model = LinearEval(None, num_classes=10, backbone="resnet18", cache_features=True)
    with pytest.raises(ValueError, match="cache_features trains on features of the evaluation transform.*crop_flip"):
        _trainer(max_epochs=1).fit(model, _data(train_transform="crop_flip"))
    with pytest.raises(ValueError, match="cache_features needs a frozen backbone"):
        FineTune(None, num_classes=10, backbone="resnet18", cache_features=True)


# ----------------------------------------------------------------------------- frozen, cached vs streaming
class _ModeSpy(L.Callback):
    def __init__(self):
        self.backbone_modes, self.head_modes = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.backbone_modes.append(any(m.training for m in pl_module.backbone.modules()))
        self.head_modes.append(pl_module.head.training)


def test_frozen_means_bit_identical_backbone_and_fine_tuning_moves_it(pretrained, one_thread):
    L.seed_everything(0)
    model = LinearEval(str(pretrained), num_classes=10, head_batchnorm=True)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.linear.weight.detach().clone()
    spy = _ModeSpy()
    model.train()  # what a user (or a loop) may call: the backbone stays in eval mode
    _trainer(max_epochs=2, callbacks=[spy]).fit(model, _data(train_transform="crop_flip"))
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a backbone tensor changed"
    assert any("running_mean" in k for k in before) and any("num_batches_tracked" in k for k in before)
    assert spy.backbone_modes and not any(spy.backbone_modes) and all(spy.head_modes)
    assert not torch.equal(head_before, model.linear.weight)
    assert all(not p.requires_grad for p in model.backbone.parameters())

    tuned = FineTune(str(pretrained), num_classes=10, lr=0.05, backbone_lr=0.01)
    spy = _ModeSpy()
    _trainer(max_epochs=1, callbacks=[spy]).fit(tuned, _data(train_transform="crop_flip"))
    changed = [k for k, v in tuned.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    assert all(spy.backbone_modes)


def _fit_head(pretrained, cache, shuffle_seed=3):
    L.seed_everything(0)
    model = LinearEval(str(pretrained), num_classes=10, head_batchnorm=True, optimizer="larc", lr=2.0,
                       cache_features=cache)
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, _data(train_transform="none", shuffle_seed=shuffle_seed))
    return model, trainer.callback_metrics


def test_cached_features_train_the_same_head_as_streaming(pretrained, one_thread):
    streamed, metrics_s = _fit_head(pretrained, cache=False)
    cached, metrics_c = _fit_head(pretrained, cache=True)
    torch.testing.assert_close(cached.linear.weight, streamed.linear.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cached.linear.bias, streamed.linear.bias, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cached.head[0].running_var, streamed.head[0].running_var, rtol=1e-4, atol=1e-6)
    assert float(metrics_c["val/top1"]) == float(metrics_s["val/top1"])
    # the comparison can tell orders apart: another shuffling seed trains another head
    other, _ = _fit_head(pretrained, cache=True, shuffle_seed=4)
    assert not torch.allclose(other.linear.weight, cached.linear.weight, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the command, end to end
def _eval_cli(tmp, checkpoint, *extra):
    return run_cli([
        "fit", "--config", str(QUICK), "--model.checkpoint", checkpoint, "--trainer.max_epochs", "8",
        "--trainer.check_val_every_n_epoch", "8", "--data.train_subset", "1000", "--data.val_subset", "500",
        "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp), "--trainer.logger.init_args.save_dir",
        str(tmp), "--trainer.enable_progress_bar", "false", *extra,
    ])


def test_linear_eval_command_on_a_pretrained_and_a_random_backbone(tmp_path, pretrained, one_thread):
    cli = _eval_cli(tmp_path / "pre", str(pretrained))
    results_path = Path(cli.trainer.log_dir) / "eval_results.json"
    results = json.loads(results_path.read_text())
    assert results["stage"] == "fit" and results["checkpoint"]["path"] == str(pretrained)
    assert results["checkpoint"]["sha256"] == hashlib.sha256(pretrained.read_bytes()).hexdigest()
    assert results["checkpoint"]["method"] == "mvssl_lightning.methods.ERSimCLR"
    assert results["config"]["model"]["class_path"] == "mvssl_lightning.evaluation.LinearEval"
    assert results["wall_time_s"] > 0 and results["epoch"] == 8
    assert results["val_global_step"] == results["global_step"] == 8 * 4  # 1,000 images in batches of 256
    # the logged top-1 is the plain count of correct argmax predictions on the 500 test images
    model, datamodule = cli.model, cli.datamodule
    datamodule.setup()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(datamodule.val_dataset, batch_size=100):
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    assert total == 500 and results["top1"] == pytest.approx(correct / total, abs=1e-6)
    assert results["top5"] >= results["top1"]

    random_cli = _eval_cli(tmp_path / "random", "null", "--model.backbone", "resnet18", "--model.cifar_stem", "false")
    random_results = json.loads((Path(random_cli.trainer.log_dir) / "eval_results.json").read_text())
    assert random_results["checkpoint"]["kind"] == "random" and random_results["checkpoint"]["sha256"] is None
    # chance is 0.1 (sd 0.013 on 500 images); these near-random features give about 0.2, as linear_probe does
    for top1 in (results["top1"], random_results["top1"]):
        assert 0.13 < top1 < 0.6


def test_knn_command_matches_a_float64_brute_force(tmp_path, pretrained, one_thread):
    cli = run_cli([
        "validate", "--config", str(REPO / "configs" / "eval" / "knn_quickstart.yaml"), "--model.checkpoint",
        str(pretrained), "--data.train_subset", "300", "--data.val_subset", "120", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    results = json.loads((Path(cli.trainer.log_dir) / "eval_results.json").read_text())
    model, datamodule = cli.model, cli.datamodule
    bank, bank_y = model.extract_features(torch.utils.data.DataLoader(datamodule.eval_train_dataset, batch_size=64))
    query, query_y = model.extract_features(torch.utils.data.DataLoader(datamodule.val_dataset, batch_size=64))
    b = torch.nn.functional.normalize(bank.double(), dim=1)
    q = torch.nn.functional.normalize(query.double(), dim=1)
    correct = 0
    for i in range(len(q)):  # Wu et al. 2018: votes exp(s / T) of the k most similar bank images
        s = b @ q[i]
        top = torch.topk(s, 20).indices
        scores = torch.zeros(10, dtype=torch.float64).index_add_(0, bank_y[top], torch.exp(s[top] / 0.1))
        correct += int(scores.argmax() == query_y[i])
    assert results["stage"] == "validate" and results["top1"] == pytest.approx(correct / len(q), abs=1e-6)
    assert results["metrics"]["knn/top1"] == results["top1"]


# ----------------------------------------------------------------------------- label subsets
def test_label_fraction_is_class_balanced_deterministic_and_rank_independent():
    subsets = []
    for global_seed in (1, 2):  # two "processes" with different global RNG states
        torch.manual_seed(global_seed)
        data = LabeledDataModule("default", label_fraction=0.1, label_seed=5, num_workers=0)
        data.setup()
        subsets.append(data.train_indices)
    assert np.array_equal(subsets[0], subsets[1])
    targets = np.load(REPO / "mvssl_lightning" / "data" / "assets" / "cifar10_default.npz")["y_train"]
    assert np.array_equal(np.bincount(targets[subsets[0]], minlength=10), np.full(10, 50))  # 10 % of 500 per class
    assert len(np.unique(subsets[0])) == 500
    other = LabeledDataModule("default", label_fraction=0.1, label_seed=6, num_workers=0)
    other.setup()
    assert not np.array_equal(other.train_indices, subsets[0])
    assert len(other.train_dataset) == 500 and data.num_classes == 10


def test_label_list_of_indices_and_its_errors(tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("# a comment\n17\n3\n\n3\n4999\n")
    data = LabeledDataModule("default", label_list=str(listing), num_workers=0)
    data.setup()
    assert data.train_indices.tolist() == [3, 17, 4999]
    listing.write_text("17\n5000\nabc\n")
    with pytest.raises(ValueError, match=r"subset.txt: 2 of 3 entries are not indices in \[0, 5000\).*5000, abc"):
        LabeledDataModule("default", label_list=str(listing), num_workers=0).setup()


def test_label_list_of_imagenet_file_names(tmp_path):
    root = tmp_path / "imagenet"
    names = {"n01440764": ["n01440764_10026.JPEG", "n01440764_2.JPEG"], "n01443537": ["n01443537_7.JPEG"]}
    for split in ("train", "val"):
        for cls, files in names.items():
            (root / split / cls).mkdir(parents=True)
            for f in files:
                Image.new("RGB", (40, 30), (10, 200, 30)).save(root / split / cls / f)
    listing = tmp_path / "1percent.txt"
    listing.write_text("n01443537_7.JPEG\nn01440764_10026.JPEG\n")
    data = LabeledDataModule("imagefolder", data_dir=str(root), label_list=str(listing), num_workers=0,
                             image_size=16, resize=18)
    data.setup()
    kept = sorted(Path(data.train_dataset.dataset.samples[i][0]).name for i in data.train_dataset.indices)
    assert kept == ["n01440764_10026.JPEG", "n01443537_7.JPEG"] and data.num_classes == 2
    x, y = data.train_dataset[0]
    assert x.shape == (3, 16, 16)
    listing.write_text("n01443537_7.JPEG\nn09999999_1.JPEG\nn08888888_2.JPEG\n")
    with pytest.raises(ValueError, match=r"1percent.txt: 2 of 3 entries name no image.*n09999999_1.JPEG, n08888888_2"):
        LabeledDataModule("imagefolder", data_dir=str(root), label_list=str(listing), num_workers=0).setup()


def test_transforms_of_the_protocols():
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    data = LabeledDataModule("default", num_workers=0)
    assert [type(t).__name__ for t in data.train_transform.transforms[:2]] == ["RandomCrop", "RandomHorizontalFlip"]
    assert data.train_transform.transforms[0].padding == 4
    big = LabeledDataModule("imagefolder", data_dir="x", crop_scale=(0.2, 1.0), randaugment=True, num_workers=0)
    crop = big.train_transform.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and crop.size == (224, 224) and crop.scale == (0.2, 1.0)
    assert type(big.train_transform.transforms[2]).__name__ == "InfoMinRandAugment"
    eval_steps = [type(t).__name__ for t in big.eval_transform.transforms]
    assert eval_steps[:2] == ["Resize", "CenterCrop"] and big.eval_transform.transforms[0].size == 256
    assert FirstView("amdim_cifar")(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="train_transform must be one of"):
        LabeledDataModule("default", train_transform="jitter")

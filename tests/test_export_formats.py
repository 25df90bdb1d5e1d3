"""``mvssl-export`` to torchvision and timm, the dispatcher's refusals, and the command's one-line errors.

References are the libraries' own models: the exported state dict must load with ``strict=True`` into
``torchvision.models.<name>(...)`` / ``timm.create_model(<name>, ...)`` and give features identical to the
checkpoint's backbone.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvssl_lightning.evaluation import LinearEval
from mvssl_lightning.export import ExportError, export_checkpoint, read_checkpoint
from mvssl_lightning.export.cli import main
from mvssl_lightning.methods import AMDIM, MVEB

pytestmark = pytest.mark.usefixtures("one_thread")


class _TwoViews(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return [torch.randn(3, 32, 32, generator=g) for _ in range(2)], i % 2


def _checkpoint(model: pl.LightningModule, path: Path) -> Path:
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(model, DataLoader(_TwoViews(), batch_size=4))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def resnet18_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
    return _checkpoint(model, tmp_path_factory.mktemp("r18") / "pre.ckpt")


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MVEB(backbone="timm:vit_tiny_patch16_224", proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none",
                 backbone_kwargs=dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2))
    return _checkpoint(model, tmp_path_factory.mktemp("vit") / "pre.ckpt")


def _same_features(ours: nn.Module, reference: nn.Module, side: int = 32) -> None:
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(x), ours.eval()(x), rtol=0, atol=0)


def test_torchvision_export_loads_strictly_with_identical_features(resnet18_ckpt, tmp_path):
    source = read_checkpoint(resnet18_ckpt)
    out = export_checkpoint(resnet18_ckpt, "torchvision", tmp_path / "r18.pth")
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    _same_features(source.backbone, net, side=64)
    with_head = export_checkpoint(resnet18_ckpt, "torchvision", tmp_path / "r18_10.pth", num_classes=10)
    classifier = torchvision.models.resnet18(num_classes=10)
    classifier.load_state_dict(torch.load(with_head, weights_only=True), strict=True)
    classifier.fc = nn.Identity()
    _same_features(source.backbone, classifier, side=64)


def test_timm_export_of_a_library_resnet_and_of_a_timm_vit(resnet18_ckpt, vit_ckpt, tmp_path):
    out = export_checkpoint(resnet18_ckpt, "timm", tmp_path / "r18_timm.pth")
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    reference.load_state_dict(torch.load(out, weights_only=True), strict=True)
    _same_features(read_checkpoint(resnet18_ckpt).backbone, reference, side=64)

    kwargs = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    out = export_checkpoint(vit_ckpt, "timm", tmp_path / "vit.pth", num_classes=5)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs)
    vit.load_state_dict(torch.load(out, weights_only=True), strict=True)
    vit.reset_classifier(0)
    _same_features(read_checkpoint(vit_ckpt).backbone, vit)


def test_an_evaluation_checkpoint_exports_its_trained_head(resnet18_ckpt, tmp_path):
    torch.manual_seed(0)
    evaluation = LinearEval(checkpoint=str(resnet18_ckpt), num_classes=10, lr_scaling="none")
    with torch.no_grad():
        evaluation.head[-1].weight.normal_()  # a head that is not the fresh initialisation
    trainer = pl.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(evaluation)
    trainer.save_checkpoint(tmp_path / "eval.ckpt")
    source = read_checkpoint(tmp_path / "eval.ckpt")
    assert source.head is not None
    out = export_checkpoint(tmp_path / "eval.ckpt", "torchvision", tmp_path / "cls.pth", num_classes=10)
    state = torch.load(out, weights_only=True)
    torch.testing.assert_close(state["fc.weight"], evaluation.head[-1].weight.detach(), rtol=0, atol=0)


def test_formats_a_backbone_cannot_go_to_are_refused_with_the_reason(vit_ckpt, tmp_path):
    with pytest.raises(ExportError, match=r"timm model, not a torchvision model; export it with --to timm"):
        export_checkpoint(vit_ckpt, "torchvision", tmp_path / "x.pth")
    cifar = _checkpoint(MVEB(backbone="resnet18", cifar_stem=True, proj_hidden_dim=8, proj_output_dim=8,
                             lr_scaling="none"), tmp_path / "cifar.ckpt")
    with pytest.raises(ExportError, match=r"CIFAR stem .*no stock torchvision model.*--to hf"):
        export_checkpoint(cifar, "torchvision", tmp_path / "y.pth")
    amdim = _checkpoint(AMDIM(cifar_stem=True, backbone_kwargs=dict(ndf=4, n_rkhs=8, depth=1)), tmp_path / "a.ckpt")
    with pytest.raises(ExportError, match=r"AMDIM's own encoder, which timm does not have"):
        export_checkpoint(amdim, "timm", tmp_path / "z.pth")


def test_the_command_refuses_existing_outputs_and_bad_files_in_one_line(resnet18_ckpt, tmp_path, capsys):
    existing = tmp_path / "exists.pth"
    existing.write_bytes(b"keep me")
    cases = [
        ([str(resnet18_ckpt), "--to", "torchvision", "--out", str(existing)], "exists; pass --overwrite"),
        ([str(tmp_path / "missing.ckpt"), "--to", "timm", "--out", str(tmp_path / "m.pth")], "checkpoint not found"),
    ]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(resnet18_ckpt.read_bytes()[:1000])
    cases.append(([str(truncated), "--to", "timm", "--out", str(tmp_path / "t.pth")], "not a checkpoint readable"))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    cases.append(([str(text), "--to", "hf", "--out", str(tmp_path / "h")], "not a checkpoint readable"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and message in err[0], err
    assert existing.read_bytes() == b"keep me"
    main([str(resnet18_ckpt), "--to", "torchvision", "--out", str(existing), "--overwrite"])
    assert "wrote" in capsys.readouterr().out and existing.read_bytes() != b"keep me"

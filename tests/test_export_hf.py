"""Safetensors files and Hugging Face folders (``mvssl-export --to safetensors / hf``) and ``load_pretrained``.

References: the backbone of the trained method itself (a round trip must give exactly its features), hashlib on
the checkpoint file (the SHA-256 in config.json and the model card), and transforms written out here with
torchvision (the one ``load_pretrained`` returns must normalise a PIL image alike).
"""

from __future__ import annotations

import hashlib
import json

import lightning.pytorch as pl
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.export.pretrained import load_pretrained
from mvssl_lightning.export.source import read_checkpoint
from mvssl_lightning.export.to_hf import CONFIG_METADATA_KEY, hf_config, write_hf, write_safetensors
from mvssl_lightning.methods import MVEB

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
TINY_VIT = dict(backbone="timm:vit_tiny_patch16_224",
                backbone_kwargs=dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2))
SPECS = {"resnet": dict(backbone="resnet18", cifar_stem=True), "vit": TINY_VIT}


class Views(Dataset):
    """``n`` samples of two 32 px views (random), label -1."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return [torch.randn(3, 32, 32, generator=g) for _ in range(2)], -1


class TinyEncoder(nn.Module):
    """A user's encoder given in a config as class_path / init_args."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _trainer(root) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      limit_val_batches=0)


def _fit_and_save(model, root, datamodule=None):
    trainer = _trainer(root)
    if datamodule is None:
        trainer.fit(model, DataLoader(Views(4), batch_size=4))
    else:
        trainer.fit(model, datamodule=datamodule)
    path = root / "pre.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``{kind: (model, checkpoint path)}`` for a CIFAR-stem ResNet-18 and a tiny timm ViT, one MVEB step each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for kind, spec in SPECS.items():
        torch.manual_seed(0)
        model = MVEB(**spec, proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
        out[kind] = (model, _fit_and_save(model, tmp_path_factory.mktemp(kind)))
    torch.set_num_threads(before)
    return out


def _features(backbone: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return backbone.eval()(x)


def _image(width: int, height: int) -> Image.Image:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(width))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", list(SPECS))
def test_an_hf_folder_loads_back_to_the_same_features(trained, kind, tmp_path):
    model, path = trained[kind]
    out = write_hf(read_checkpoint(path), tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    backbone = load_pretrained(out)
    assert not backbone.training
    torch.testing.assert_close(_features(backbone), _features(model.backbone), rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_safetensors_file_loads_back_to_the_same_features(trained, kind, tmp_path):
    model, path = trained[kind]
    source = read_checkpoint(path)
    out = write_safetensors(source, tmp_path / "backbone.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()[CONFIG_METADATA_KEY]) == json.loads(json.dumps(hf_config(source)))
        assert set(f.keys()) == set(model.backbone.state_dict())
    torch.testing.assert_close(_features(load_pretrained(str(out))), _features(model.backbone), rtol=0, atol=0)
    # recognised by its content under another name too
    renamed = out.rename(tmp_path / "weights.bin")
    torch.testing.assert_close(_features(load_pretrained(renamed)), _features(model.backbone), rtol=0, atol=0)


def test_tied_weights_are_written_as_separate_tensors(trained, tmp_path):
    source = read_checkpoint(trained["resnet"][1])
    source.backbone.tied = nn.Linear(2, 2, bias=False)
    source.backbone.tied2 = nn.Linear(2, 2, bias=False)
    source.backbone.tied2.weight = source.backbone.tied.weight  # one storage, two names
    out = write_safetensors(source, tmp_path / "tied.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert {"tied.weight", "tied2.weight"} <= set(f.keys())
        torch.testing.assert_close(f.get_tensor("tied.weight"), f.get_tensor("tied2.weight"), rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_checkpoint_loads_directly(trained, kind):
    model, path = trained[kind]
    backbone, transform = load_pretrained(path, with_transform=True)
    torch.testing.assert_close(_features(backbone), _features(model.backbone), rtol=0, atol=0)
    assert transform(_image(300, 260)).shape == (3, 224, 224)  # no data recorded: 224 px ImageNet


def test_a_config_class_path_backbone_is_rebuilt(tmp_path):
    torch.manual_seed(0)
    model = MVEB(backbone=TinyEncoder(width=6), proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
    path = _fit_and_save(model, tmp_path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    spec = {"class_path": f"{TinyEncoder.__module__}.TinyEncoder", "init_args": {"width": 6}}
    raw["hyper_parameters"]["backbone"] = spec  # what LightningCLI records for a module given in a config
    torch.save(raw, path)
    out = write_hf(read_checkpoint(path), tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["backbone"] == spec
    torch.testing.assert_close(_features(load_pretrained(out)), _features(model.backbone), rtol=0, atol=0)


def test_an_evaluation_checkpoint_exports_its_own_backbone(trained, tmp_path):
    from mvssl_lightning.evaluation import FineTune

    _, path = trained["resnet"]
    torch.manual_seed(0)
    evaluation = FineTune(checkpoint=str(path), num_classes=3, lr_scaling="none")
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    trainer = _trainer(tmp_path)
    trainer.fit(evaluation, DataLoader(data, batch_size=4))
    eval_path = tmp_path / "eval.ckpt"
    trainer.save_checkpoint(eval_path)
    out = write_hf(read_checkpoint(eval_path), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["proj_hidden_dim"] == 8 and config["evaluation"]["recipe"]["num_classes"] == 3
    assert config["checkpoint_sha256"] == hashlib.sha256(eval_path.read_bytes()).hexdigest()
    torch.testing.assert_close(_features(load_pretrained(out)), _features(evaluation.backbone), rtol=0, atol=0)
    torch.testing.assert_close(_features(load_pretrained(eval_path)), _features(evaluation.backbone), rtol=0, atol=0)


# --------------------------------------------------------------------------------------- what the folder says
def test_config_json_describes_the_backbone_and_its_origin(trained, tmp_path):
    _, path = trained["vit"]
    source = read_checkpoint(path)
    source.hparams["not_json"] = nn.Identity()
    source.hparams["not_finite"] = float("nan")
    out = write_hf(source, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["library"] == "mvssl_lightning" and config["format_version"] == 1
    assert config["backbone"] == "timm:vit_tiny_patch16_224" and config["backbone_kwargs"] == TINY_VIT["backbone_kwargs"]
    assert config["cifar_stem"] is False and config["feat_dim"] == 16
    assert config["method"] == "mvssl_lightning.methods.mveb.MVEB"
    assert config["recipe"]["proj_output_dim"] == 8 and config["recipe"]["lr_scaling"] == "none"
    assert "not_json" not in config["recipe"] and "not_finite" not in config["recipe"]
    # fitted without MultiViewDataModule: nothing recorded, ImageNet 224 px assumed and said so
    assert config["data_recorded"] is False and config["image_size"] == 224
    assert config["mean"] == pytest.approx(IMAGENET_MEAN) and config["std"] == pytest.approx(IMAGENET_STD)
    assert config["dataset"] is None
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert (config["epoch"], config["global_step"]) == (raw["epoch"], raw["global_step"]) and raw["global_step"] == 1
    assert config["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _eval_results(path, checkpoint):
    """An eval_results.json as mvssl-eval writes it (the fields the model card reads, and a few more)."""
    results = {
        "stage": "fit", "top1": 0.7123, "top5": 0.9345,
        "metrics": {"val/top1": 0.7123, "val/top5": 0.9345}, "epoch": 100, "global_step": 19600,
        "val_global_step": 19600,
        "checkpoint": {"kind": "pretraining", "path": str(checkpoint), "sha256": hashlib.sha256(
            checkpoint.read_bytes()).hexdigest(), "method": "mvssl_lightning.methods.MVEB", "backbone": "resnet18",
            "cifar_stem": True, "zero_init_residual": True, "backbone_kwargs": {}},
        "model": "mvssl_lightning.evaluation.modules.LinearEval", "wall_time_s": 12.5,
        "finished_at": "2026-01-01T00:00:00+00:00",
        "config": {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                          "init_args": {"name": "linear_cifar10"}}},
                   "model": {"class_path": "mvssl_lightning.evaluation.LinearEval"},
                   "data": {"dataset": "cifar10", "label_fraction": None}},
    }
    path.write_text(json.dumps(results, indent=2))
    return path


def test_the_model_card_states_the_checkpoint_hash_and_the_results(trained, tmp_path):
    _, path = trained["resnet"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    results = _eval_results(tmp_path / "eval_results.json", path)
    out = write_hf(read_checkpoint(path), tmp_path / "export", eval_results=results)
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: mvssl_lightning" in front and "license: mit" in front
    assert "- self-supervised-learning" in front and "- mveb" in front
    assert digest in body and "mvssl_lightning.methods.mveb.MVEB" in body and "`resnet18`" in body
    row = next(line for line in body.splitlines() if line.startswith("| LinearEval"))
    assert "linear_cifar10" in row and "cifar10" in row and "71.23" in row and "93.45" in row and digest[:12] in row
    assert f'load_pretrained("{out}", with_transform=True)' in body
    assert "from mvssl_lightning import load_pretrained" in body
    without = (write_hf(read_checkpoint(path), tmp_path / "plain") / "README.md").read_text()
    assert "No evaluation results" in without and digest in without


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = write_hf(read_checkpoint(trained["resnet"][1]), tmp_path / "export", push_to_hub="me/mveb-r18")
    assert calls == [("create_repo", {"repo_id": "me/mveb-r18", "repo_type": "model", "exist_ok": True}),
                     ("upload_folder", {"repo_id": "me/mveb-r18", "folder_path": str(out), "repo_type": "model"})]
    assert 'load_pretrained("me/mveb-r18", with_transform=True)' in (out / "README.md").read_text()


def test_a_repo_id_is_downloaded_then_read_as_a_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    model, path = trained["resnet"]
    out = write_hf(read_checkpoint(path), tmp_path / "export")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: asked.append(kw) or str(out))
    torch.testing.assert_close(_features(load_pretrained("me/mveb-r18")), _features(model.backbone), rtol=0, atol=0)
    assert asked == [{"repo_id": "me/mveb-r18", "repo_type": "model"}]
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_pretrained(tmp_path / "missing.ckpt")


def test_a_python_module_backbone_is_an_error_saying_to_load_it_yourself(trained, tmp_path):
    out = write_hf(read_checkpoint(trained["resnet"][1]), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["backbone"] = "module:my_project.Encoder"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"my_project.Encoder.*load_state_dict\(safetensors.torch.load_file"):
        load_pretrained(out)


def test_weights_that_do_not_fit_are_an_error_naming_the_file(trained, tmp_path):
    out = write_hf(read_checkpoint(trained["resnet"][1]), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["cifar_stem"] = False
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors.*conv1.weight"):
        load_pretrained(out)


# -------------------------------------------------------------------------------------------------- transforms
def test_the_transform_at_224_is_resize_center_crop_normalize(trained, tmp_path):
    out = write_hf(read_checkpoint(trained["resnet"][1]), tmp_path / "export")
    _, transform = load_pretrained(out, with_transform=True)
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    image = _image(300, 260)
    got = transform(image)
    assert got.shape == (3, 224, 224)
    torch.testing.assert_close(got, reference(image), rtol=0, atol=0)


def test_a_cifar_datamodule_run_records_its_data_and_the_transform_follows(tmp_path):
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", cifar_stem=True, proj_hidden_dim=8, proj_output_dim=8, lr_scaling="none")
    dm = MultiViewDataModule(dataset="default", views="two_views_cifar", batch_size=16, num_workers=0,
                             train_subset=32, test_subset=16)
    path = _fit_and_save(model, tmp_path, datamodule=dm)
    out = write_hf(read_checkpoint(path), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["data_recorded"] is True and config["image_size"] == 32
    assert config["dataset"] == "default" and config["views"] == "two_views_cifar"
    assert config["mean"] == pytest.approx(CIFAR_MEAN) and config["std"] == pytest.approx(CIFAR_STD)
    card = (out / "README.md").read_text()
    assert "image size: 32 px" in card and "`default`" in card
    _, transform = load_pretrained(out, with_transform=True)
    image = _image(32, 32)
    reference = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    torch.testing.assert_close(transform(image), reference(image), rtol=0, atol=0)
    assert transform(_image(48, 40)).shape == (3, 32, 32)
    # the checkpoint itself gives the same transform
    _, from_checkpoint = load_pretrained(path, with_transform=True)
    torch.testing.assert_close(from_checkpoint(image), reference(image), rtol=0, atol=0)


def test_backbone_kwargs_json_cannot_hold_are_an_error_not_a_silent_drop(trained, tmp_path):
    source = read_checkpoint(trained["vit"][1])
    source.backbone_kwargs = {**source.backbone_kwargs, "act_layer": nn.GELU}
    with pytest.raises(ValueError, match=r"pre.ckpt: its backbone_kwargs cannot be written to JSON"):
        write_safetensors(source, tmp_path / "vit.safetensors")
    assert not (tmp_path / "vit.safetensors").exists()

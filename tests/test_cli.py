"""The ``mvssl`` command: configs parse, the quickstart trains, bad input fails with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvssl_lightning.cli import run_cli as main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("mvssl_lightning.methods")


def test_mveb_r50_is_the_official_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/mveb_r50.yaml"), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    model, trainer, data = cfg["model"]["init_args"], cfg["trainer"], cfg["data"]
    assert model["backbone"] == "resnet50" and model["optimizer"] == "lars"
    assert model["lr"] == 0.3 and model["weight_decay"] == 1e-6 and model["warmup_epochs"] == 10
    assert model["lambd"] == 0.01 and model["eta"] == 0.01 and model["base_momentum"] == 0.996
    assert trainer["max_epochs"] == 800 and trainer["sync_batchnorm"] and trainer["precision"] == "bf16-mixed"
    assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] == 4096
    assert data["views"] == "mveb_multicrop"


def test_quickstart_fast_dev_run(tmp_path):
    cli = main([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
        "--data.num_workers", "0", "--data.batch_size", "16",
    ])
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


def test_module_entry_point_runs_help():
    out = subprocess.run([sys.executable, "-m", "mvssl_lightning", "fit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--config" in out.stdout


def test_console_script_exits_zero_after_a_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from mvssl_lightning.cli import main; sys.exit(main())",
         "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.fast_dev_run", "true",
         "--data.num_workers", "0", "--data.batch_size", "8", "--model.proj_hidden_dim", "32",
         "--trainer.default_root_dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_unknown_dataset_names_the_problem(tmp_path, capsys):
    # dataset is a Literal: LightningCLI refuses the value while parsing and lists the valid names
    with pytest.raises(SystemExit) as stop:
        main([
            "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "imagenette",
            "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
        ])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "imagenette" in err and "cifar10" in err


def test_missing_dataset_path_names_the_path(tmp_path):
    missing = tmp_path / "no_such_imagenet"
    with pytest.raises(FileNotFoundError, match="no_such_imagenet"):
        main([
            "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "imagefolder",
            "--data.data_dir", str(missing), "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path),
        ])


def test_single_view_transform_is_refused(tmp_path):
    # a plain image transform yields one view; MVEB needs two globals
    with pytest.raises(ValueError, match="needs (at least )?2 views per sample, but the view recipe gave 1"):
        main([
            "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.view_kwargs", "null",
            "--data.views", "torchvision.transforms.ToTensor", "--data.num_workers", "0",
            "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
        ])


CIFAR_CONFIGS = sorted((REPO / "configs").glob("*_cifar10.yaml"))


@pytest.mark.parametrize("config", CIFAR_CONFIGS, ids=[c.stem for c in CIFAR_CONFIGS])
def test_every_cifar_config_trains_one_step_on_the_embedded_data(config, tmp_path):
    # the embedded default is a CIFAR-10 subset, so each CIFAR recipe runs offline unchanged but for
    # the dataset, a small batch and fp32 on the CPU
    cli = main([
        "fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.default_root_dir", str(tmp_path),
        "--data.dataset", "default", "--data.num_workers", "0", "--data.batch_size", "8",
    ])
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].isfinite()

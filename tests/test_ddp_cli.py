"""A real 2-process DDP run of ``mvssl fit`` on the CPU (gloo), resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _fit(tmp_path: Path, max_epochs: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "mvssl_lightning", "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", str(max_epochs), "--trainer.limit_val_batches", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "8", "--data.train_subset", "48", "--data.test_subset", "32",
        "--data.num_workers", "0", "--model.proj_hidden_dim", "64", "--model.proj_output_dim", "32",
        "--model.class_path", "mvssl_lightning.methods.MVEB", "--data.views", "auto",  # a method with an EMA teacher
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def test_ddp_fit_then_resume(tmp_path):
    first = _fit(tmp_path, 1)
    assert first.returncode == 0, first.stderr[-3000:]
    # the quickstart's ModelCheckpoint(save_last=True) writes into the run folder <default_root_dir>/<name>/version_<n>
    (last,) = tmp_path.glob("quickstart/version_0/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True, map_location="cpu")
    # 48 images over 2 processes with batch 8 -> 3 optimiser steps per epoch
    assert state["global_step"] == 3 and state["epoch"] == 0

    second = _fit(tmp_path, 2, "--ckpt_path", str(last))
    assert second.returncode == 0, second.stderr[-3000:]
    # the resumed run continues in the same run directory (one TensorBoard run, no version_1)
    assert sorted(p.name for p in (tmp_path / "quickstart").iterdir()) == ["version_0"]
    (resumed_path,) = tmp_path.glob("quickstart/version_0/checkpoints/last.ckpt")
    resumed = torch.load(resumed_path, weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1
    # the EMA teacher moved on from the first run's state, and the probe state travelled along
    key = "teacher_backbone.conv1.weight"
    assert not torch.equal(state["state_dict"][key], resumed["state_dict"][key])
    assert any("OnlineLinearProbe" in k for k in resumed["callbacks"])


def test_ddp_eval_writes_its_results_and_exits(tmp_path):
    """``mvssl-eval`` under 2 DDP processes finishes and writes eval_results.json (rank 0 used to wait
    alone in ``Trainer.log_dir``, a collective the other rank had skipped)."""
    cmd = [
        str(Path(sys.executable).parent / "mvssl-eval"), "validate",
        "--config", str(REPO / "configs/eval/knn_quickstart.yaml"),
        "--model.checkpoint", "null", "--model.backbone", "resnet18", "--model.cifar_stem", "false",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.train_subset", "32", "--data.val_subset", "16", "--data.batch_size", "8", "--data.num_workers", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = tmp_path.glob("runs/knn_quickstart/version_0/eval_results.json")
    assert 0.0 <= json.loads(results.read_text())["top1"] <= 1.0

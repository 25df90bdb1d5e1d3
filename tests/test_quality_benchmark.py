"""The learning-quality benchmark (``python -m benchmarks.quality``): the smoke run end to end, any npz file, the
offline probe against data with a known answer, the collapse check, the writers and the error messages."""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.quality import __main__ as quality
from benchmarks.quality.chart import write_chart
from benchmarks.quality.features import feature_spread
from benchmarks.quality.recipes import (
    BASELINES,
    METHOD_CONFIGS,
    Budget,
    adapt_config,
    baseline_datamodule,
    build_method,
    load_config,
)
from benchmarks.quality.report import markdown
from mvssl_lightning.core.probe import linear_probe


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``--smoke`` run (every method and baseline, embedded data, CPU) shared by the tests below."""
    out = tmp_path_factory.mktemp("quality-smoke")
    # the run seeds the global RNGs (and Lightning's PL_GLOBAL_SEED): hand them back as they were
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        status = quality.main(["--smoke", "--out-dir", str(out)])
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    stem = "quality-default-smoke-cpu"
    return status, json.loads((out / f"{stem}.json").read_text()), out / f"{stem}.md", out / f"{stem}.png"


def test_smoke_runs_every_method_and_baseline_with_finite_accuracies(smoke):
    status, results, _, _ = smoke
    assert status == 0
    names = [(r["kind"], r["name"]) for r in results["rows"]]
    assert names == [("method", m) for m in METHOD_CONFIGS] + [("baseline", b) for b in BASELINES]
    for row in results["rows"]:
        assert "error" not in row, row
        for key in ("knn_top1", "online_probe_top1", "offline_probe_top1"):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (row["name"], key, row[key])
        assert row["steps"] == 2 and row["train_s_per_epoch"] > 0 and row["peak_memory_gib"] > 0
        assert math.isfinite(row["std_x_sqrt_d"]) and row["effective_rank"] >= 1.0
    assert results["smoke"] and results["epochs"] == 1 and results["image_size"] == 32
    assert results["knn"]["k"] == 200 and results["knn"]["temperature"] == 0.1
    assert results["command"].startswith("python -m benchmarks.quality --smoke")


def test_smoke_writes_the_table_and_a_chart(smoke):
    _, results, md, png = smoke
    table = md.read_text()
    assert results["command"] in table and "| **MVEB** |" in table and "| *SimCLR (lightly)* |" in table
    assert f"]({png.name})" in table
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 720 and 300 <= image.height <= 1000


def test_any_npz_file_runs_with_crops_that_follow_the_data(tmp_path):
    # raw-array npz of 64 px images: the harness must read it, train, and name the outputs after it
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny64.npz"
    np.savez(path, x_train=rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8), y_train=np.arange(16) % 4,
             x_test=rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    status = quality.main(["--data", str(path), "--methods", "er_simclr", "--baselines", "", "--epochs", "1",
                           "--batch-size", "8", "--num-workers", "0", "--accelerator", "cpu", "--probe-epochs", "5",
                           "--out-dir", str(tmp_path)])
    results = json.loads((tmp_path / "quality-tiny64-cpu.json").read_text())
    assert status == 0 and results["image_size"] == 64 and results["num_classes"] == 4
    (row,) = results["rows"]
    assert row["cifar_stem"] and row["steps"] == 2 and 0 <= row["knn_top1"] <= 1


def _tiny_npz(tmp_path: Path, side: int) -> Path:
    path = tmp_path / f"tiny{side}.npz"
    x = np.zeros((8, side, side, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(8, dtype=np.int64), x_test=x[:4], y_test=np.zeros(4, dtype=np.int64))
    return path


@pytest.mark.parametrize("side, stem, local", [(64, True, 32), (96, False, 48)])
def test_recipes_follow_the_resolution(tmp_path, side, stem, local):
    budget = Budget("npz", str(_tiny_npz(tmp_path, side)), side, epochs=1, batch_size=4, steps_per_epoch=2)
    model, dm, info = build_method("mveb", budget)
    dm.setup()
    views, _ = dm.train_dataset[0]
    assert [v.shape[-1] for v in views] == [side, side] + [local] * 6
    assert dm.eval_train_dataset[0][0].shape[-1] == side and info["cifar_stem"] is stem
    _, dm, info = build_method("infomin", budget)  # an import-path recipe: eval at the native size too
    dm.setup()
    assert [v.shape[-1] for v in dm.train_dataset[0][0]] == [side, side] and dm.test_dataset[0][0].shape[-1] == side
    _, dm, info = build_method("amdim", budget)  # AMDIM's encoder: 32 px up to 64 px, else 128 px
    dm.setup()
    amdim_side = 32 if side <= 64 else 128
    assert ({v.shape[-1] for v in dm.train_dataset[0][0]} == {amdim_side}
            and dm.test_dataset[0][0].shape[-1] == amdim_side)
    assert info["cifar_stem"] is (amdim_side == 32)
    dm = baseline_datamodule("npz", budget.data_dir, side, 4, 0)
    dm.setup()
    assert [v.shape[-1] for v in dm.train_dataset[0][0]] == [side, side]


def test_recipes_keep_the_config_at_32_px_and_cap_warmup_only_for_short_runs():
    config = load_config("mveb")
    full = adapt_config(config, Budget("default", None, 32, epochs=200, batch_size=512, steps_per_epoch=97))
    assert full["model"] == config["model"] and full["data"]["views"] == config["data"]["views"]
    assert full["data"]["batch_size"] == 512 and full["data"]["dataset"] == "default"
    short = adapt_config(config, Budget("default", None, 32, epochs=3, batch_size=64, steps_per_epoch=10))
    assert short["model"]["init_args"]["warmup_epochs"] == pytest.approx(0.3)
    amdim = adapt_config(load_config("amdim"), Budget("default", None, 32, epochs=3, batch_size=64, steps_per_epoch=10))
    assert amdim["model"]["init_args"]["warmup_steps"] == 3


def test_offline_probe_separates_gaussian_clusters_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    centres = 6.0 * torch.randn(10, 32, generator=g)

    def sample(n):
        y = torch.arange(n) % 10
        return centres[y] + torch.randn(n, 32, generator=g), y

    (xtr, ytr), (xte, yte) = sample(600), sample(300)
    result = linear_probe(xtr, ytr, xte, yte, num_classes=10, epochs=20)
    assert result.test_top1 >= 0.99 and result.train_top1 >= 0.99
    shuffled = ytr[torch.randperm(600, generator=g)]  # labels carry no information about the features
    assert linear_probe(xtr, shuffled, xte, yte, num_classes=10, epochs=20).test_top1 < 0.25


def test_offline_probe_ignores_unlabelled_samples():
    x = torch.cat([torch.full((50, 4), -1.0), torch.full((50, 4), 1.0)]) + 0.1 * torch.randn(100, 4)
    y = torch.cat([torch.zeros(50), torch.ones(50)]).long()
    y_train = y.clone()
    y_train[::5] = -1
    assert linear_probe(x, y_train, x, y, num_classes=2, epochs=20).test_top1 == 1.0


def test_feature_spread_flags_collapse():
    g = torch.Generator().manual_seed(0)
    healthy = feature_spread(torch.randn(2000, 64, generator=g))
    assert healthy["std_x_sqrt_d"] == pytest.approx(1.0, abs=0.05) and healthy["effective_rank"] > 50
    assert not healthy["collapsed"]
    one_vector = torch.ones(2000, 64) + 1e-4 * torch.randn(2000, 64, generator=g)
    assert feature_spread(one_vector)["collapsed"]
    one_line = torch.randn(2000, 1, generator=g) * torch.ones(1, 64)  # every feature on one line
    assert feature_spread(one_line)["collapsed"]


def _results(rows):
    return {
        "dataset": "toy", "image_size": 32, "num_classes": 10, "train_size": 100, "test_size": 50, "epochs": 2,
        "batch_size": 8, "precision": "32-true", "device": "cpu (test)", "torch": "x", "lightning": "y", "lightly": "z",
        "date": "today", "git_commit": "0123456789abcdef", "git_dirty": False,
        "command": "python -m benchmarks.quality --x", "knn": {"k": 200, "temperature": 0.1},
        "offline_probe": {"epochs": 100}, "chance": 0.1, "label": "", "rows": rows,
    }


def _row(name, kind, knn, **extra):
    return {"name": name, "kind": kind, "label": name.upper(), "num_views": 2, "knn_top1": knn,
            "online_probe_top1": 0.5, "offline_probe_top1": 0.625, "std_x_sqrt_d": 0.3, "effective_rank": 12.34,
            "collapsed": False, "train_s_per_epoch": 1.25, "peak_memory_gib": 2.0, "peak_memory_measure": "test",
            **extra}


def test_markdown_table_rows():
    rows = [_row("ours", "method", 0.875), _row("theirs", "baseline", math.nan, collapsed=True),
            {"name": "broken", "kind": "method", "label": "Broken", "error": "RuntimeError: boom"}]
    lines = markdown(_results(rows), chart="c.png").splitlines()
    assert "| **OURS** | 2 | 87.5 | 50.0 | 62.5 | 0.300 | 12.3 | no | 1.2 | 2.00 |" in lines
    assert "| *THEIRS* | 2 | n/a | 50.0 | 62.5 | 0.300 | 12.3 | **yes** | 1.2 | 2.00 |" in lines
    assert any(line.startswith("| **Broken** |") and "RuntimeError: boom" in line for line in lines)
    assert "`python -m benchmarks.quality --x`" in lines and lines[-1] == "![learning quality](c.png)"
    assert "commit `0123456789`" in lines[0]


def test_chart_draws_every_model(tmp_path):
    rows = [_row(f"m{i}", "method" if i < 9 else "baseline", 0.1 * i) for i in range(12)]
    rows.append({"name": "broken", "kind": "baseline", "error": "x"})
    path = write_chart(_results(rows), tmp_path / "chart.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 13 * 80 and image.height > 300
        pixels = np.asarray(image.convert("RGB"))
    # both colour families appear: methods blue, baselines orange
    assert ((pixels == (0x1F, 0x4E, 0x96)).all(axis=-1)).any() and ((pixels == (0xB4, 0x50, 0x1A)).all(axis=-1)).any()


def test_unknown_names_list_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--methods", "mveb,simsiam"])
    err = capsys.readouterr().err
    assert "'simsiam'" in err and "valid names: mveb, mec" in err
    with pytest.raises(SystemExit):
        quality.parse_args(["--baselines", "moco"])
    assert "valid names: simclr, byol, barlowtwins" in capsys.readouterr().err


def test_render_redraws_table_and_chart_from_json(tmp_path):
    path = tmp_path / "quality-toy-cpu.json"
    path.write_text(json.dumps({**_results([_row("ours", "method", 0.5)]), "device_slug": "cpu"}))
    assert quality.main(["--render", str(path)]) == 0
    assert ("| **OURS** |" in (tmp_path / "quality-toy-cpu.md").read_text()
            and (tmp_path / "quality-toy-cpu.png").is_file())


def test_missing_npz_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--data", str(tmp_path / "nowhere.npz")])
    err = capsys.readouterr().err
    assert "npz file not found" in err and "nowhere.npz" in err


def test_gpu_views_run_every_model_through_the_device_pipeline(tmp_path):
    # --gpu-views switches methods and lightly baselines alike to the device view pipeline
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = quality.main(["--smoke", "--methods", "mveb,infomin", "--baselines", "simclr", "--gpu-views",
                               "--probe-epochs", "5", "--out-dir", str(tmp_path)])
    assert not [w for w in caught if "CPU view pipeline" in str(w.message)]  # no recipe fell back
    results = json.loads((tmp_path / "quality-default-smoke-cpu.json").read_text())
    assert status == 0 and results["gpu_views"]
    assert [r["name"] for r in results["rows"]] == ["mveb", "infomin", "simclr"]
    for row in results["rows"]:
        assert "error" not in row and row["gpu_views"] and row["steps"] == 2, row

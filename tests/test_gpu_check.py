"""``python -m benchmarks.gpu_check``: the CPU smoke run end to end, and the time boxes, statuses and targets.

The smoke run executes every part of the GPU check on the CPU with tiny sizes (the CUDA tests skip), so that
the one-command GPU run keeps working on machines without a GPU. The other tests check the pieces the GPU
run relies on against hand-computed expectations: a step over its box is killed with everything it started,
the boxes share the time that is left, and the targets table applies the documented thresholds.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from benchmarks import gpu_check

PARTS = ["correctness", "throughput", "pipeline", "quality", "extras"]
FINAL = {"ok", "failed", "timed out", "skipped", "interrupted"}


def test_cpu_smoke_runs_every_part_and_writes_the_results_after_each(tmp_path, monkeypatch):
    out, logs = tmp_path / "out", tmp_path / "logs"
    snapshots = []  # (json, md) as written, every time the check writes its files
    write = gpu_check.write_outputs

    def recording_write(record, out_dir):
        paths = write(record, out_dir)
        snapshots.append((json.loads(paths["json"].read_text()), paths["md"].read_text()))
        return paths

    monkeypatch.setattr(gpu_check, "write_outputs", recording_write)
    committed = sorted(p.name for p in gpu_check.RESULTS.glob("gpu-check-*"))
    rc = gpu_check.main(["--cpu-smoke", "--out", str(out), "--logs", str(logs), "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in gpu_check.RESULTS.glob("gpu-check-*")) == committed  # nothing written there

    # the files exist from the start, and after each part they hold its final status, the later parts pending
    assert [p["status"] for p in snapshots[0][0]["parts"]] == ["pending"] * 5
    assert snapshots[-1][0]["setup"]["status"] == "ok" and not snapshots[-1][0]["setup"]["problems"]
    for i, name in enumerate(PARTS):
        first_done = next(j for j, (rec, _) in enumerate(snapshots) if rec["parts"][i]["status"] in FINAL)
        record, md = snapshots[first_done]
        assert [p["status"] for p in record["parts"][i + 1:]] == ["pending"] * (4 - i)
        assert all(p["status"] in FINAL for p in record["parts"][:i + 1])
        assert gpu_check.TITLES[name] in md and "## Targets" in md

    record = json.loads((out / "gpu-check-smoke-cpu.json").read_text())
    md = (out / "gpu-check-smoke-cpu.md").read_text()
    assert record["mode"] == "cpu-smoke" and record["finished"] and record["budget_s"] == gpu_check.SMOKE_BUDGET_S
    assert record["command"].startswith("python -m benchmarks.gpu_check --cpu-smoke")
    assert {"gpu", "torch", "cuda_build", "python", "cpu_count", "git_commit"} <= set(record["environment"])
    assert [p["name"] for p in record["parts"]] == PARTS
    assert [p["status"] for p in record["parts"]] == ["skipped", "ok", "ok", "ok", "skipped"]
    sources = next(p for p in record["parts"] if p["name"] == "pipeline")["results"]["source_rows"]
    assert {r["source"] for r in sources} == {"npz", "litdata"} and "Where the images come from" in md
    assert sorted(p.name for p in out.iterdir()) == [gpu_check.LOGS_ARCHIVE, "gpu-check-smoke-cpu.json",
                                                     "gpu-check-smoke-cpu.md"]  # the results only
    for part in record["parts"][:4]:
        assert part["seconds"] >= 0 and part["budget_s"] > 0 and part["steps"]
        for step in part["steps"]:
            assert {"name", "status", "seconds", "budget_s", "command", "returncode", "log_tail"} <= set(step)
            assert step["command"].startswith("python -m ")
            assert (logs / f"{part['name']}-{step['name']}.log").is_file()

    parts = {p["name"]: p for p in record["parts"]}
    counts = parts["correctness"]["results"]["counts"]
    assert counts["skipped"] > 40 and counts["passed"] == counts["failed"] == counts["error"] == 0
    assert all(outcome == "skipped" for outcome in parts["correctness"]["results"]["tests"].values())

    rows = parts["throughput"]["results"]["rows"]
    assert {(r["name"], r["views"]) for r in rows} == {
        ("bare_backbone", 2), ("lightly_simclr", 2), ("lightly_byol", 2), ("mveb", 2), ("er_simclr", 2),
        ("bare_backbone", 8), ("mveb", 8)}
    assert all(r["images_per_s"] > 0 and r["vs_backbone"] > 0 for r in rows)
    by_name = {(r["name"], r["views"]): r for r in rows}
    assert by_name[("mveb", 2)]["peer"] == "lightly_byol" and "vs_peer" in by_name[("mveb", 2)]
    assert "vs_peer" not in by_name[("mveb", 8)]  # its peer has two views

    pipe = parts["pipeline"]["results"]["rows"]
    assert [r["case"] for r in pipe] == ["224px-two_views", "32px-two_views_cifar"]
    assert all(r["cpu_path"]["images_per_s"] > 0 and r["device_path"]["images_per_s"] > 0 for r in pipe)

    quality = parts["quality"]["results"]
    assert [r["name"] for r in quality["rows"]] == ["mveb", "mec", "simclr", "byol"]
    assert all("error" not in r and 0 <= r["knn_top1"] <= 1 for r in quality["rows"])
    assert quality["gpu_views"] is True

    targets = {(t["target"], t["setting"]): t for t in record["targets"]}
    assert targets[("CUDA tests pass", "pytest -m cuda; passed/failed/skipped")]["pass"] is None  # skipped: no verdict
    kinds = {t["target"].split(" (")[0] for t in record["targets"]}
    assert {"mveb vs bare backbone", "mveb vs lightly_byol", "er_simclr vs lightly_simclr",
            "gpu_views pipeline 224px-two_views", "gpu_views pipeline 32px-two_views_cifar"} <= kinds
    assert sum("learns" in t["target"] for t in record["targets"]) == 4
    for t in record["targets"]:
        assert t["pass"] in (True, False, None)
    for title in gpu_check.TITLES.values():
        assert title in md
    assert "## Throughput" in md and "## View pipeline" in md and "## Learning" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run for real")
def test_without_a_gpu_it_stops_with_status_2_and_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _writes(path, results, then=""):
    """``python -c`` code that writes ``results`` as JSON to ``path``, then runs ``then``."""
    return f"import json, pathlib; p = pathlib.Path({str(path)!r}); p.parent.mkdir(parents=True, exist_ok=True); " \
           f"p.write_text(json.dumps({results!r})); print('wrote', flush=True); {then}"


def test_a_hanging_step_is_cut_at_its_box_and_the_later_parts_still_run(tmp_path, monkeypatch):
    # GPU mode with stand-in steps: a failing test, a throughput step that hangs after writing one row, a
    # pipeline step that works, a learning step that crashes
    monkeypatch.setattr(gpu_check, "probe_gpu", lambda env=None: {
        "available": True, "name": "Fake GPU 9000", "memory_gib": 1.0, "count": 1, "cudnn": 1})
    tp_row = {"backbone": "resnet50", "size": 224, "batch_size": 256, "compiled": False, "name": "mveb", "views": 2,
              "images_per_s": 900.0, "vs_backbone": 0.75, "peer": "lightly_byol", "has_teacher": True}
    pipe_row = {"case": "224px-two_views", "batch_size": 256, "workers": 15, "decode": "device", "speedup": 5.0,
                "cpu_path": {"images_per_s": 1000.0, "num_views": 2},
                "device_path": {"images_per_s": 5000.0, "num_views": 2}}

    def fake_plan(args, logs):
        tp_out, pipe_out, q_out = logs / "tp", logs / "pipe", logs / "q"
        return gpu_check.Plan(smoke=False, steps={
            "correctness": [gpu_check.Step("pytest", ["-c", "print('tests/test_cuda.py::test_a[MVEB] PASSED [ 50%]'); "
                                                            "print('tests/test_cuda.py::test_b FAILED [100%]')"])],
            "throughput": [gpu_check.Step("hangs", ["-c", _writes(tp_out / "throughput-x.json", {"rows": [tp_row]},
                                                                  "import time; time.sleep(600)")], out=tp_out)],
            "pipeline": [gpu_check.Step("works", ["-c", _writes(pipe_out / "pipeline-x.json", {"rows": [pipe_row]})],
                                        out=pipe_out)],
            "quality": [gpu_check.Step("crashes", ["-c", "import os; os.abort()"], out=q_out)],
            "extras": [],
        })

    monkeypatch.setattr(gpu_check, "plan", fake_plan)
    from mvssl_lightning.data import embedded_default_path

    out = tmp_path / "out"
    rc = gpu_check.main(["--budget-s", "20", "--out", str(out), "--logs", str(tmp_path / "logs"), "--quiet",
                         "--data", str(embedded_default_path()), "--quality-epochs", "3"])
    assert rc == 1
    record = json.loads((out / "gpu-check-fake-gpu-9000.json").read_text())
    assert (out / "gpu-check-fake-gpu-9000.md").is_file()
    parts = {p["name"]: p for p in record["parts"]}
    assert [parts[n]["status"] for n in PARTS] == ["failed", "timed out", "ok", "failed", "skipped"]
    assert parts["correctness"]["results"]["counts"] == {"passed": 1, "failed": 1, "skipped": 0, "error": 0}
    assert parts["throughput"]["results"]["rows"][0]["images_per_s"] == 900.0  # kept from the cut step
    assert parts["throughput"]["steps"][0]["status"] == "timed out"
    assert parts["pipeline"]["results"]["rows"][0]["device_path"]["images_per_s"] == 5000.0
    assert record["environment"]["gpu"] == "Fake GPU 9000"
    got = {t["target"]: t["pass"] for t in record["targets"]}
    assert got["CUDA tests pass"] is False and got["mveb vs bare backbone (EMA teacher)"] is True
    assert got["gpu_views pipeline 224px-two_views (images/s)"] is True


def test_a_step_over_its_box_is_killed_with_what_it_started(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(600)")
    result = gpu_check.run_command(["-c", code], 3.0, tmp_path / "step.log", echo=False)
    assert result["status"] == "timed out"
    assert "started" in result["log_tail"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the group was sent SIGTERM (then SIGKILL); give the kernel a moment to reap it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's own subprocess survived its time box")


def test_a_crashing_step_is_failed_and_the_check_goes_on(tmp_path):
    result = gpu_check.run_command(["-c", "import os; print('boom', flush=True); os.abort()"], 60.0,
                                   tmp_path / "crash.log", echo=False)
    assert result["status"] == "failed" and result["returncode"] != 0 and "boom" in result["log_tail"]
    result = gpu_check.run_command(["-c", "import sys; sys.exit(0)"], 60.0, tmp_path / "ok.log", echo=False)
    assert result["status"] == "ok" and result["returncode"] == 0


def test_boxes_share_the_time_that_is_left():
    # 540 s budget, 20 s reserve: correctness gets 90 / 520 of the 520 s left
    assert gpu_check.box(520.0, [90, 130, 80, 150, 70]) == pytest.approx(90.0)
    # correctness took 30 s instead of 90: throughput's share of the 490 s left is 130 / 430
    assert gpu_check.box(490.0, [130, 80, 150, 70]) == pytest.approx(490.0 * 130 / 430)
    assert gpu_check.box(-3.0, [1.0]) == 0.0
    # an optional step of weight 0 takes no share from those before it, and all that is left after them
    assert gpu_check.box(100.0, [0.5, 0.5, 0.0]) == pytest.approx(50.0)
    assert gpu_check.box(40.0, [0.0]) == pytest.approx(40.0)
    assert sum(gpu_check.SHARES.values()) + gpu_check.RESERVE_S == gpu_check.DEFAULT_BUDGET_S


def test_part_status_rules():
    st = gpu_check.part_status
    assert st([{"status": "ok"}, {"status": "ok"}]) == "ok"
    assert st([{"status": "ok"}, {"status": "failed"}, {"status": "timed out"}]) == "failed"
    assert st([{"status": "ok"}, {"status": "timed out"}]) == "timed out"
    assert st([{"status": "ok"}, {"status": "skipped", "no_time": True}]) == "timed out"
    assert st([{"status": "ok"}, {"status": "skipped", "no_time": True, "optional": True}]) == "ok"
    assert st([{"status": "skipped"}]) == "skipped"  # every CUDA test skipped
    assert st([{"status": "skipped", "no_time": True}]) == "timed out"
    assert st([]) == "skipped"  # the CPU smoke run's extras
    assert st([{"status": "skipped", "no_time": True, "optional": True}]) == "skipped"  # no time for the extras


def _record(throughput=(), pipeline=(), quality=(), correctness="ok"):
    counts = {"passed": 3, "failed": 0, "skipped": 0, "error": 0}
    return {"parts": [
        {"name": "correctness", "status": correctness, "results": {"counts": counts}},
        {"name": "throughput", "status": "ok", "results": {"rows": list(throughput)}},
        {"name": "pipeline", "status": "ok", "results": {"rows": list(pipeline)}},
        {"name": "quality", "status": "ok", "results": {"rows": list(quality), "chance": 0.1, "epochs": 5}},
    ]}


def _tp(name, vs_backbone, teacher=None, vs_peer=None, views=2, peer="lightly_byol"):
    row = {"name": name, "backbone": "resnet50", "size": 224, "batch_size": 256, "compiled": False, "views": views,
           "images_per_s": 1000.0, "vs_backbone": vs_backbone}
    if teacher is not None:
        row.update(peer=peer, has_teacher=teacher)
    if vs_peer is not None:
        row["vs_peer"] = vs_peer
    return row


def test_targets_apply_the_documented_thresholds():
    record = _record(
        throughput=[_tp("bare_backbone", 1.0), _tp("lightly_byol", 0.8),
                    _tp("er_simclr", 0.95, teacher=False, vs_peer=0.99, peer="lightly_simclr"),
                    _tp("mec", 0.72, teacher=True, vs_peer=1.05), _tp("er_byol", 0.69, teacher=True),
                    _tp("mveb", 0.71, teacher=True, views=8)],
        pipeline=[{"case": "224px-two_views", "batch_size": 256, "workers": 15, "device_path": {"images_per_s": 4100.0}},
                  {"case": "32px-two_views_cifar", "batch_size": 512, "workers": 15,
                   "device_path": {"images_per_s": 39000.0}},
                  {"case": "32px-mveb_multicrop_cifar", "batch_size": 512, "workers": 15,
                   "device_path": {"images_per_s": 9000.0}}],
        quality=[{"name": "mveb", "label": "MVEB", "knn_top1": 0.35, "train_s_per_epoch": 4.0},
                 {"name": "byol", "label": "BYOL (lightly)", "knn_top1": 0.15, "train_s_per_epoch": 3.0}],
    )
    got = [(t["target"], t["threshold"], t["pass"]) for t in gpu_check.evaluate_targets(record)]
    assert got == [
        ("CUDA tests pass", "all pass", True),
        ("er_simclr vs bare backbone (no teacher)", 0.93, True),
        ("er_simclr vs lightly_simclr", 1.0, False),
        ("mec vs bare backbone (EMA teacher)", 0.70, True),
        ("mec vs lightly_byol", 1.0, True),
        ("er_byol vs bare backbone (EMA teacher)", 0.70, False),
        ("mveb vs bare backbone (EMA teacher)", 0.70, True),
        ("gpu_views pipeline 224px-two_views (images/s)", 4000.0, True),
        ("gpu_views pipeline 32px-two_views_cifar (images/s)", 40000.0, False),
        ("MVEB learns (kNN top-1 >= 2 x chance)", pytest.approx(0.2), True),
        ("BYOL (lightly) learns (kNN top-1 >= 2 x chance)", pytest.approx(0.2), False),
    ]
    assert [t["pass"] for t in gpu_check.evaluate_targets(_record(correctness="failed"))] == [False]


def test_learning_epochs_fit_the_box_from_the_measured_rates():
    def row(name, views, rate):
        return {"name": name, "views": views, "size": 32, "compiled": False, "images_per_s": rate}

    record = _record(
        throughput=[row("mveb", 8, 10000.0), row("mec", 2, 25000.0), row("lightly_simclr", 2, 50000.0),
                    row("lightly_byol", 2, 25000.0), {**row("mec", 2, 1e9), "compiled": True}],
        pipeline=[{"case": "32px-two_views_cifar", "device_path": {"images_per_s": 40000.0}},
                  {"case": "32px-mveb_multicrop_cifar", "device_path": {"images_per_s": 5000.0}}],
    )
    # seconds per epoch x 1.5: MVEB 50000 / min(10000, 5000) = 10, MEC 2, SimCLR 50000 / 40000 = 1.25, BYOL 2
    per_epoch = 1.5 * (10 + 2 + 1.25 + 2)
    box = 4 * gpu_check.QUALITY_OVERHEAD_S + 7.5 * per_epoch
    assert gpu_check.quality_epochs(record, box) == 7
    assert gpu_check.quality_epochs(record, 1e6) == 20  # capped
    assert gpu_check.quality_epochs(record, 0.0) == 1
    assert gpu_check.quality_epochs(_record(), 300.0) is None  # nothing measured: the caller's default


def test_the_gpu_run_steps_are_valid_command_lines(tmp_path):
    # the GPU plan cannot run here; its command lines must still parse with each benchmark's own parser
    from benchmarks import pipeline, throughput
    from benchmarks.quality.__main__ import parse_args as quality_args
    from mvssl_lightning.data import embedded_default_path

    args = gpu_check.parse_args(["--out", str(tmp_path), "--data", str(embedded_default_path())])
    steps = gpu_check.plan(args, tmp_path).steps
    assert sorted(steps) == sorted(PARTS)  # run in PARTS order
    (pytest_step,) = steps["correctness"]
    assert pytest_step.argv[:5] == ["-m", "pytest", "-m", "cuda", "-v"]
    assert all((gpu_check.ROOT / f).is_file() for f in pytest_step.argv if f.startswith("tests/"))
    for step in steps["throughput"] + steps["extras"]:
        ns = throughput.build_parser().parse_args(step.argv[2:])
        assert ns.preset in ("gpu-r50", "gpu-cifar", "gpu-vit") and ns.out == step.out
        assert set(ns.methods.split(",")) <= set(throughput.METHODS)
        assert set(ns.peers.split(",")) <= set(throughput.PEERS)
    # the headline rows first: ResNet-50 / 224 px eager (bare backbone, peers, methods, MVEB's multi-crop);
    # compiled variants and the ViT last, all optional
    assert [s.name for s in steps["throughput"]] == ["eager-r50", "eager-cifar"]
    assert "--multicrop" in steps["throughput"][0].argv and "eager" in steps["throughput"][0].argv
    assert [s.name for s in steps["extras"]] == ["eager-vit", "compiled-cifar", "compiled-r50"]
    assert all(s.optional for s in steps["extras"])
    for step in steps["pipeline"]:
        ns = pipeline.build_parser().parse_args(step.argv[2:])
        assert ns.preset == "gpu" and set(ns.cases.split(",")) <= set(pipeline.CASES)
    assert {c for s in steps["pipeline"] for c in s.argv[s.argv.index("--cases") + 1].split(",")} == set(pipeline.CASES)
    context = {"quality_epochs": 7}
    names = []
    for step in steps["quality"]:
        step.prepare(step, context)  # adds --epochs
        ns = quality_args(step.argv[2:])
        assert ns.epochs == 7 and ns.batch_size == 512 and ns.gpu_views and ns.out_dir == step.out
        names += ns.methods + ns.baselines
    assert names == ["mveb", "mec", "simclr", "byol"]


def test_runs_as_a_script_too(tmp_path):
    # `python benchmarks/gpu_check.py --help` works without the package on the path
    result = gpu_check.run_command([str(gpu_check.ROOT / "benchmarks" / "gpu_check.py"), "--help"], 120.0,
                                   tmp_path / "help.log", echo=False)
    assert result["status"] == "ok" and "--budget-s" in result["log_tail"]


# ------------------------------------------------------------------------------------------------ the bundle
from benchmarks import gpu_bundle  # noqa: E402


def test_the_bundle_carries_what_the_image_lacks_and_nothing_it_has():
    reqs = gpu_bundle.project_requirements()
    missing = gpu_bundle.missing_distributions(reqs)
    # the image has no lightly, jsonargparse (nor its signatures extra) or litdata; hydra-core and its
    # parser runtime come with lightly
    assert {"lightly", "jsonargparse", "docstring-parser", "typeshed-client", "hydra-core", "omegaconf",
            "antlr4-python3-runtime"} <= set(missing)
    assert "timm" in missing  # its version there is not recorded: carried, installed only if needed
    for has in ("torch", "torchvision", "lightning", "numpy", "pillow", "tensorboard", "safetensors", "pyyaml"):
        assert has not in missing
    from importlib.metadata import version

    assert missing["lightly"] == version("lightly")  # the version this project runs with here
    # an image version outside the requirement is carried too
    old_torch = gpu_bundle.missing_distributions(["torch>=2.4"], image_versions={"torch": "2.1.0"})
    assert old_torch == {"torch": version("torch")}
    assert gpu_bundle.missing_distributions(["torch>=2.4"], image_versions={"torch": "2.11.0"}) == {}
    with pytest.raises(gpu_bundle.BundleError, match="not installed here"):
        gpu_bundle.missing_distributions(["surely-not-a-distribution-of-this-env>=1"])


def test_the_cifar_subset_is_stratified_and_keeps_the_files_byte_for_byte(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("test", 30)):
        lengths = rng.integers(5, 20, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays.update({f"jpeg_{split}": rng.integers(0, 256, offsets[-1], dtype=np.uint8),
                       f"offsets_{split}": offsets, f"y_{split}": np.arange(n) % 3})
    src = tmp_path / "src.npz"
    np.savez(src, class_names=np.array(["a", "b", "c"]), **arrays)
    sizes = gpu_bundle.subset_npz(src, tmp_path / "sub.npz", n_train=13, n_test=6)
    assert sizes == {"train": 13, "test": 6}
    sub = np.load(tmp_path / "sub.npz")
    assert list(sub["class_names"]) == ["a", "b", "c"]
    assert sorted(np.bincount(sub["y_train"])) == [4, 4, 5] and list(np.bincount(sub["y_test"])) == [2, 2, 2]
    for split in ("train", "test"):
        files = {bytes(arrays[f"jpeg_{split}"][a:b]): int(y) for a, b, y in
                 zip(arrays[f"offsets_{split}"][:-1], arrays[f"offsets_{split}"][1:], arrays[f"y_{split}"])}
        off = sub[f"offsets_{split}"]
        for i, y in enumerate(sub[f"y_{split}"]):
            assert files[bytes(sub[f"jpeg_{split}"][off[i]:off[i + 1]])] == y  # an original file, its label


def test_install_uses_the_bundle_alone():
    env = gpu_bundle.isolated_pip_env({"PIP_FIND_LINKS": "/opt/wheels", "PIP_INDEX_URL": "x", "HOME": "/h"})
    assert env["PIP_CONFIG_FILE"] == os.devnull and env["HOME"] == "/h"
    assert "PIP_FIND_LINKS" not in env and "PIP_INDEX_URL" not in env


def test_a_failed_setup_starts_no_part(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_bundle, "check_environment", lambda reqs: {
        "status": "failed", "versions": {}, "problems": ["import lightly: ModuleNotFoundError: No module named 'lightly'"]})
    monkeypatch.setattr(gpu_check, "_run_part", lambda *a, **k: pytest.fail("a part started"))
    out = tmp_path / "out"
    assert gpu_check.main(["--cpu-smoke", "--out", str(out), "--logs", str(tmp_path / "logs"), "--quiet"]) == 1
    assert "No module named 'lightly'" in capsys.readouterr().err
    record = json.loads((out / "gpu-check-smoke-cpu.json").read_text())
    assert record["setup"]["status"] == "failed" and all(p["status"] == "skipped" for p in record["parts"])
    assert "lightly" in (out / "gpu-check-smoke-cpu.md").read_text()


def test_logs_never_go_inside_the_results_folder(tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--cpu-smoke", "--out", str(tmp_path), "--logs", str(tmp_path / "logs")])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--bundle", str(tmp_path)])  # not a bundle: no bundle.json


BUNDLE = os.environ.get("MVSSL_GPU_BUNDLE", str(gpu_check.ROOT / ".gpu_bundle"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(BUNDLE, gpu_bundle.MANIFEST)),
                    reason="no bundle: build it with `python -m benchmarks.gpu_check --prepare .gpu_bundle` "
                           "(or set MVSSL_GPU_BUNDLE)")
def test_dress_rehearsal_from_the_bundle_in_a_fresh_environment(tmp_path):
    # scripts/gpu_dress_rehearsal.sh: a fresh venv holding only a stand-in of the GPU image, the rest installed
    # offline from the bundle, then the CPU smoke run; about 3 minutes on 2 cores
    import subprocess

    out = tmp_path / "out"
    done = subprocess.run(["bash", str(gpu_check.ROOT / "scripts" / "gpu_dress_rehearsal.sh"), BUNDLE, str(out),
                           "--quiet"], cwd=gpu_check.ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [gpu_check.LOGS_ARCHIVE, "gpu-check-smoke-cpu.json",
                                                     "gpu-check-smoke-cpu.md"]
    record = json.loads((out / "gpu-check-smoke-cpu.json").read_text())
    installed = " ".join(record["setup"]["install"]["installed"])
    assert record["setup"]["status"] == "ok" and "lightly-" in installed and "jsonargparse-" in installed
    assert [p["status"] for p in record["parts"]] == ["skipped", "ok", "ok", "ok", "skipped"]
    sources = next(p for p in record["parts"] if p["name"] == "pipeline")["results"]["source_rows"]
    assert {r["source"] for r in sources} == {"npz", "litdata"} and "Where the images come from" in (out / "gpu-check-smoke-cpu.md").read_text()

"""``python -m benchmarks.pipeline`` runs end to end on the CPU and writes its results files."""

from __future__ import annotations

import json

from benchmarks.pipeline import main


def test_pipeline_benchmark_smoke(tmp_path):
    result = main(["--preset", "cpu-small", "--workers", "0", "--images", "16", "--photo-size", "64",
                   "--out", str(tmp_path)])
    assert [r["case"] for r in result["rows"]] == ["224px-two_views", "32px-two_views_cifar"]
    for row in result["rows"]:
        for path in ("cpu_path", "device_path"):
            assert row[path]["images_per_s"] > 0 and row[path]["num_views"] == 2
    written = json.loads(next(tmp_path.glob("pipeline-*.json")).read_text())
    assert written["rows"][0]["workers"] == 0
    table = next(tmp_path.glob("pipeline-*.md")).read_text()
    assert "224px-two_views" in table and "32px-two_views_cifar" in table

"""Compile coverage (issue 24, item 6): ``compile=True`` compiles AMDIM's training path, multi-crop compiles a
fixed small number of graphs and nothing after the first step, and ShuffleBN keeps ``channels_last``.

Dynamo's counters with the CPU ``eager`` backend (``torch.compile`` is patched to it): what is traced and how
often, without generating code. ``python -m benchmarks.compile_census`` records the counts of every method.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from benchmarks.sync_census import SETTINGS, ViewsDataset, build_method
from mvssl_lightning.methods import InfoMin


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with the ``eager`` backend, a fresh Dynamo cache and zeroed counters."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def _views(name: str, batch: int = 8) -> list[torch.Tensor]:
    _, view_counts, size, local_size = SETTINGS[name]
    return [v[:batch] for v in ViewsDataset(batch, view_counts, size, local_size).views]


def _step(model: torch.nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(1)  # AMDIM's 5x5 cells
    loss = model.compute_loss(views)[0]  # type: ignore[operator]
    loss.backward()
    return loss.detach()


def test_amdim_compiles_its_training_path(eager_compile, one_thread):
    views = _views("amdim")
    eager = build_method("amdim")
    compiled = build_method("amdim", compile=True)
    compiled.configure_model()
    loss = _step(compiled, views)
    # the training step alone (forward_maps and the heads, not the encoder's forward) was traced, as one graph
    assert counters["frames"]["ok"] >= 1 and counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    torch.testing.assert_close(loss, _step(eager, views), rtol=1e-6, atol=1e-6)
    _step(compiled, views)
    assert counters["stats"]["unique_graphs"] == 1  # no recompile at the next step


def test_multicrop_compiles_a_fixed_number_of_graphs(eager_compile, one_thread):
    views = _views("mveb")  # 2 globals of 16 px + 6 locals of 8 px
    model = build_method("mveb", compile=True)
    model.configure_model()
    _step(model, views)
    graphs = counters["stats"]["unique_graphs"]
    # the student at the global and (dynamic) local size, the teacher at the global size
    assert graphs <= 3, dict(counters["stats"])
    for _ in range(2):
        _step(model, views)
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the first step"


def test_shuffle_bn_keeps_channels_last():
    seen = []

    model = InfoMin(backbone=torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        proj_hidden_dim=8, proj_output_dim=4, queue_size=16, jigsaw=False, channels_last=True, shuffle_bn_groups=2)
    model.teacher_backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    views = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    model.compute_loss([model._prepare(v) for v in views])
    assert seen == [True, True]  # both shuffled BN groups

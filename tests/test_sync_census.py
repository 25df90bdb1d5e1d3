"""Host syncs of the training step (issue 24, item 3): the census tool itself, every method held to at most
2 model-side syncs per steady-state step with the default callbacks, and the sync-free rewrites checked
against the formulas they replace (float64)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmarks.sync_census import TARGET, SyncCensus, census_of
from mvssl_lightning.callbacks import OnlineLinearProbe
from mvssl_lightning.losses.amdim import _nce
from mvssl_lightning.losses.mveb import stein_score
from mvssl_lightning.methods import METHODS


# ----------------------------------------------------------------------------- the census counts what syncs
def test_census_counts_the_calls_that_wait_for_the_device():
    x = torch.randn(6)
    a = torch.eye(3) + 0.1
    census = SyncCensus()
    census.active = True
    with census:
        bool(x.sum() > 0)
        float(x[0])
        x.sum().item()
        _ = x[x > 0]
        torch.linalg.solve(a, torch.ones(3, 1))
        torch.tensor(1.0, device="cpu")
        # none of these waits
        torch.linalg.solve_ex(a, torch.ones(3, 1))
        _ = x[torch.tensor([0, 2])]
        _ = x.masked_fill(x > 0, 0.0).sum()
        torch.full((), 2.0, device="cpu")
    kinds = sorted(kind for (_, kind, _), n in census.counts.items() for _ in range(n))
    assert kinds == ["boolean mask", "host-to-device", "item", "item", "item", "linalg check"]
    # the calls are filed under this test (no mvssl_lightning frame on the stack): not model side
    assert all(side == "lightning" and "test_sync_census.py" in site for side, _, site in census.counts)


# ----------------------------------------------------------------------------- every method, default callbacks
@pytest.mark.parametrize("name", list(METHODS))
def test_steady_state_step_makes_at_most_two_model_side_syncs(name, one_thread):
    row = census_of(name, steps=10, warmup=4, log_every=5, batch_size=8)
    sites = [s for s in row["sites"] if s["side"] == "model"]
    assert row["model_side_per_step"] <= TARGET, sites
    # what is left: the probe's one read of its labelled count; the finite check and TrainingHealth read once per
    # interval (none of the losses' or the methods' own steps syncs)
    per_step = {s["site"].split(" ")[0].rsplit(":", 1)[0] for s in sites if s["per_step"] >= 1}
    assert per_step <= {"mvssl_lightning/callbacks/online_probe.py"}, sites


# ----------------------------------------------------------------------------- the rewrites keep the values
def _nce_with_masks(src, trg_all, offset, tclip, reg_weight):
    """AMDIM's NCE as written before (boolean masks; official ``NCE_MI_MULTI._loss_g2l``)."""
    b, c = src.shape
    n = trg_all.shape[0]
    scores = torch.einsum("bc,ncl->bnl", src, trg_all) / math.sqrt(c)
    reg = reg_weight * scores.pow(2).mean()
    scores = tclip * torch.tanh(scores / tclip)
    rows = torch.arange(b)
    pos_mask = torch.zeros(b, n, dtype=torch.bool)
    pos_mask[rows, rows + offset] = True
    pos = scores[pos_mask]
    neg = scores[~pos_mask].reshape(b, -1)
    log_softmax = pos - torch.logaddexp(pos, torch.logsumexp(neg, dim=1, keepdim=True))
    return -log_softmax.mean(), reg


@pytest.mark.parametrize("offset, n", [(0, 5), (5, 15), (10, 15)])
def test_amdim_nce_without_masks_equals_the_masked_formula(offset, n):
    g = torch.Generator().manual_seed(offset + n)
    src = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    trg = (3 * torch.randn(n, 8, 12, generator=g, dtype=torch.float64)).requires_grad_()
    nce, reg = _nce(src, trg, offset, 20.0, 0.05)
    ref_nce, ref_reg = _nce_with_masks(src, trg, offset, 20.0, 0.05)
    torch.testing.assert_close(nce, ref_nce, rtol=1e-13, atol=0)
    torch.testing.assert_close(reg, ref_reg, rtol=1e-13, atol=0)
    grads = torch.autograd.grad(nce + reg, (src, trg))
    ref_grads = torch.autograd.grad(ref_nce + ref_reg, (src, trg))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_stein_score_solve_ex_equals_the_inverse_of_the_official_code():
    z = F.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    n = z.shape[0]
    sim = z @ z.T
    bandwidth = torch.sort((1 - sim).flatten(), descending=True).values[n * n // 2 - 1].clamp_min(0.1)
    kernel = torch.exp(sim / bandwidth)
    grad_kernel = kernel.sum(dim=1, keepdim=True) * z / bandwidth
    reference = -torch.linalg.inv(kernel + 0.01 * torch.eye(n, dtype=z.dtype)) @ grad_kernel
    torch.testing.assert_close(stein_score(z), reference, rtol=1e-9, atol=1e-12)


def test_probe_step_on_a_partly_labelled_batch_equals_the_step_on_the_labelled_rows():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(10, 6, generator=g)
    y = torch.tensor([3, -1, 0, 1, -1, 2, 3, -1, 0, 1])
    probe = OnlineLinearProbe(num_classes=4)

    class _Module(torch.nn.Module):
        feat_dim = 6

        def log(self, *args, **kwargs):
            pass

    trainer = SimpleNamespace(world_size=1)
    probe.on_train_batch_end(trainer, _Module(), {"features": f}, ([f], y), 0)  # type: ignore[arg-type]
    # reference: BatchNorm and a linear layer, zero-initialised, one AdamW step on f[y >= 0] (the old indexing)
    keep = y >= 0
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(6, affine=False), torch.nn.Linear(6, 4))
    torch.nn.init.zeros_(head[1].weight)
    torch.nn.init.zeros_(head[1].bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    F.cross_entropy(head(f[keep]), y[keep]).backward()
    optimizer.step()
    assert probe.head is not None
    for got, want in zip(probe.head.state_dict().values(), head.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ----------------------------------------------------------------------------- the finite check, read per interval
def test_finite_check_names_the_first_non_finite_step_at_the_next_read(monkeypatch):
    import lightning as L

    from benchmarks.sync_census import SETTINGS, ViewsDataset, build_method

    model = build_method("er_simclr")
    original = model.compute_loss
    steps: list[int] = []

    def patched(views):
        loss, terms, features = original(views)
        steps.append(len(steps))
        if len(steps) >= 3:  # global steps 2, 3, ... all non-finite
            loss = loss * float("nan")
        return loss, terms, features

    monkeypatch.setattr(model, "compute_loss", patched)
    _, counts, size, local_size = SETTINGS["er_simclr"]
    loader = torch.utils.data.DataLoader(ViewsDataset(80, counts, size, local_size), batch_size=8, drop_last=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=10, log_every_n_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at global step 2 \(epoch 0, batch 2\)"):
        trainer.fit(model, train_dataloaders=loader)
    assert len(steps) == 5  # read after global step 4 (every log_every_n_steps = 5 steps), not at step 2


def test_no_checkpoint_is_written_after_a_non_finite_loss_before_the_next_read(tmp_path, monkeypatch):
    """The deferred read happens before every checkpoint: a save between the bad step and the next read raises
    instead of writing a checkpoint of a diverged run."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from benchmarks.sync_census import SETTINGS, ViewsDataset, build_method

    model = build_method("er_simclr")
    original = model.compute_loss

    def patched(views):
        loss, terms, features = original(views)
        return loss * float("nan") if model.global_step >= 2 else loss, terms, features

    monkeypatch.setattr(model, "compute_loss", patched)
    _, counts, size, local_size = SETTINGS["er_simclr"]
    loader = torch.utils.data.DataLoader(ViewsDataset(80, counts, size, local_size), batch_size=8, drop_last=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_steps=10, log_every_n_steps=50, logger=False, callbacks=[checkpoints],
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at global step 2"):
        trainer.fit(model, train_dataloaders=loader)
    assert not list(tmp_path.glob("*.ckpt"))  # the save after step 3 raised before writing


def test_cuda_sync_reports_are_filed_by_call_site(monkeypatch):
    """The ``--device cuda`` path without a GPU: CUDA's sync warnings (simulated) are counted, others pass."""
    import warnings

    from benchmarks.sync_census import cuda_sync_reports

    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    census = SyncCensus()
    census.active = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with cuda_sync_reports(census):
            for _ in range(2):
                warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert list(census.counts.values()) == [2]
    (side, kind, site), = census.counts
    assert (side, kind) == ("lightning", "cuda") and "test_sync_census.py" in site

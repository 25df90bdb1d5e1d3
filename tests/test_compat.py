"""Pins the Lightning (and torch) internals that :mod:`mvssl_lightning.core.compat` reads, on the installed
versions: an upgrade that moves one fails here, by name.

Each behaviour is observed on a real ``Trainer`` run, not on the adapter's own output alone: the batch
count against the number of ``training_step`` calls, the loader against ``Trainer.num_training_batches``
after a ``max_steps``-only run's setup, the compile flag against ``nn.Module.compile``.
"""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mvssl_lightning.core.compat import attached_trainer, batches_done, is_compiled, load_train_dataloader


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.seen: list[tuple[int, int]] = []  # (batch_idx, batches_done before the step)
        self.loader_batches: float = -1.0

    def training_step(self, batch, batch_idx):
        self.seen.append((batch_idx, batches_done(self.trainer)))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        load_train_dataloader(self.trainer)
        self.loader_batches = self.trainer.num_training_batches
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 12, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=batch_size)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_batches_done_counts_the_steps_taken_in_this_epoch():
    model = _Tiny()
    _trainer(max_epochs=2).fit(model, _loader())
    # 3 batches an epoch: before batch i of an epoch, i batches of that epoch were done
    assert model.seen == [(0, 0), (1, 1), (2, 2), (0, 0), (1, 1), (2, 2)]


def test_load_train_dataloader_makes_the_epoch_length_known_in_a_max_steps_run():
    model = _Tiny()
    _trainer(max_epochs=-1, max_steps=2).fit(model, _loader(n=20, batch_size=4))
    assert model.loader_batches == 5


def test_attached_trainer():
    model = _Tiny()
    assert attached_trainer(model) is None
    trainer = _trainer(max_steps=1)
    trainer.fit(model, _loader())
    assert attached_trainer(model) is trainer


def test_is_compiled_follows_module_compile():
    module = nn.Linear(2, 2)
    assert not is_compiled(module)
    module.compile()
    assert is_compiled(module)
    assert set(dict(module.named_parameters())) == {"weight", "bias"}  # in place: names unchanged


def test_lightningcli_still_has_the_two_internals_the_clis_rely_on():
    # mvssl_lightning.cli holds --ckpt_path back from this step (it would replace the configured model with the
    # checkpoint's hyperparameters), which runs between parse_arguments and before_instantiate_classes
    source = inspect.getsource(LightningCLI.__init__)
    order = [source.index(name) for name in ("self.parse_arguments(", "self._parse_ckpt_path()",
                                               "self.before_instantiate_classes()")]
    assert order == sorted(order)
    assert "parse_object" in inspect.getsource(LightningCLI._parse_ckpt_path)


def test_litdata_fs_provider_is_the_client_litdata_uses_for_object_storage():
    from mvssl_lightning.core.compat import litdata_fs_provider

    provider = litdata_fs_provider("s3://bucket/shards", {})
    assert callable(getattr(provider, "download_file", None)) and callable(getattr(provider, "upload_file", None))

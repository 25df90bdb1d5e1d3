"""Method constructors as a type checker, LightningCLI and a user's subclass see them.

Every method lists its own arguments and then every :class:`SiameseModule` argument explicitly (with its
recipe's defaults) and forwards the latter by name; mypy rejects a misspelt argument; Lightning's own
``save_hyperparameters`` records the complete set, for the library's methods and for a user's subclass
that passes ``**kwargs`` on.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mvssl_lightning.methods import AMDIM, METHODS, MVEB, SiameseModule

ROOT = Path(__file__).resolve().parents[1]
BASE_ARGS = [n for n in inspect.signature(SiameseModule.__init__).parameters if n != "self"]


class _Forwarded(Exception):
    pass


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_lists_and_forwards_every_base_argument(name, monkeypatch):
    cls = METHODS[name]
    params = inspect.signature(cls).parameters
    assert "kwargs" not in params and set(BASE_ARGS) <= set(params), sorted(set(BASE_ARGS) - set(params))
    for arg in BASE_ARGS:  # a type checker sees the annotation the base declares
        assert params[arg].annotation == inspect.signature(SiameseModule.__init__).parameters[arg].annotation, arg
    received: dict = {}

    def record(self, **kwargs):
        received.update(kwargs)
        raise _Forwarded

    monkeypatch.setattr(SiameseModule, "__init__", record)
    given = {arg: object() for arg in BASE_ARGS}  # one distinct value each: a swapped pair would show
    if cls is AMDIM:  # AMDIM checks its encoder before the base is built
        given["backbone"] = "amdim"
    with pytest.raises(_Forwarded):
        cls(**given)
    assert received.keys() == given.keys()
    assert all(received[arg] is given[arg] for arg in BASE_ARGS), [a for a in BASE_ARGS if received[a] is not given[a]]


def test_saved_hyperparameters_are_the_complete_resolved_set():
    model = MVEB(backbone="resnet18", proj_hidden_dim=16, proj_output_dim=8, lr=0.2)
    expected = {n: p.default for n, p in inspect.signature(MVEB).parameters.items()}
    expected.update(backbone="resnet18", proj_hidden_dim=16, proj_output_dim=8, lr=0.2)
    assert dict(model.hparams) == expected


def test_a_user_subclass_with_kwargs_and_type_checking_only_annotations(tmp_path):
    module = tmp_path / "user_method.py"
    module.write_text(textwrap.dedent('''
        from __future__ import annotations
        from typing import TYPE_CHECKING, Any
        from mvssl_lightning.methods import MVEB
        if TYPE_CHECKING:
            from collections.abc import Sequence

        class MyMVEB(MVEB):
            def __init__(self, extra: Sequence[int] = (1, 2), **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.extra = tuple(extra)

        model = MyMVEB(extra=(3,), backbone="resnet18", proj_hidden_dim=16, proj_output_dim=8, lr=0.7)
        assert model.hparams["extra"] == (3,) and model.hparams["lr"] == 0.7, dict(model.hparams)
        assert model.hparams["warmup_start_factor"] == 1e-3  # MVEB's recipe default still applies
        print("ok")
    '''))
    out = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_mypy_rejects_a_misspelt_method_argument(tmp_path):
    snippet = tmp_path / "typo.py"
    snippet.write_text(
        "from mvssl_lightning.methods import MEC\n"
        "good = MEC(lr=0.1, backbone='resnet18', eps_sq=32.0)\n"
        "bad = MEC(lrr=0.1)\n"
        "worse = MEC(optimizer='adagrad')\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--follow-imports", "silent",
         "--cache-dir", str(ROOT / ".mypy_cache"), str(snippet)],
        capture_output=True, text=True, cwd=ROOT,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert any('typo.py:3:' in e and 'Unexpected keyword argument "lrr"' in e for e in errors), out.stdout
    assert any("typo.py:4:" in e and "adagrad" in e for e in errors), out.stdout  # Literal choices are checked
    assert not any("typo.py:2:" in e for e in errors), out.stdout


@pytest.mark.parametrize("optimizer", ["lars", "larc"])
def test_optimiser_settings_reach_the_optimiser(optimizer):
    """Each optimiser setting lands in its own slot (a positional mix-up once sent trust_coefficient into
    weight_decay, where the groups' own decay hid it)."""
    import lightning.pytorch as pl

    model = MVEB(backbone="resnet18", proj_hidden_dim=16, proj_output_dim=8, optimizer=optimizer, lr=0.4,
                 lr_scaling="none", momentum=0.8, weight_decay=3e-6, trust_coefficient=0.02, warmup_epochs=0.0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False)
    model.trainer = trainer  # what Lightning does before configure_optimizers
    opt = model.configure_optimizers()["optimizer"]
    trust = opt.trust_coefficient if optimizer == "larc" else opt.defaults["trust_coefficient"]
    assert trust == 0.02
    decayed = next(g for g in opt.param_groups if g.get("name") == "decay")
    assert decayed["weight_decay"] == 3e-6 and decayed["momentum"] == 0.8 and decayed["lr"] == 0.4

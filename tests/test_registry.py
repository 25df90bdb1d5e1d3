"""The method registry ``mvssl_lightning.methods.METHODS`` against what is written about the methods.

* the README's methods table lists exactly the registry's keys, in its order;
* every method has a pre-training config in ``configs/`` and a page in ``docs/methods/``;
* **configs state only what differs from the method's recipe defaults**, and say why. The rule, for
  every ``configs/*.yaml`` (not ``configs/eval/``) whose ``model.class_path`` is a registered method:
  every key under ``model.init_args``

  - whose value EQUALS the class's default (``inspect.signature(cls)``) is not written at all: it would
    silently keep the old value after the class's recipe changes;
  - whose value DIFFERS from the default carries a trailing YAML comment on its line (for a nested value,
    on the key's line) that says why, e.g. ``lr: 0.4  # 32 px CIFAR recipe (solo-learn), not ImageNet's``.

  Values are compared as YAML reads them (PyYAML), tuples as lists, ints as floats; nested values (a
  ``backbone_kwargs`` mapping) as a whole.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mvssl_lightning.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))  # not configs/eval/: those configure the evaluation
#: pages of docs/methods/ about all methods at once, not one method
OVERVIEW_PAGES = {"overview.md", "index.md", "README.md"}


def _methods_table_keys(readme: str) -> list[str]:
    """The first-column keys (in backticks) of the table rows of README.md's "## Methods" section."""
    section = re.search(r"^## Methods[^\n]*\n(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
    assert section, "README.md has no '## Methods' section"
    return re.findall(r"^\| `([^`]+)` \|", section.group(1), flags=re.M)


def test_readme_methods_table_is_the_registry():
    keys = _methods_table_keys((ROOT / "README.md").read_text(encoding="utf-8"))
    assert keys == list(METHODS), "README.md's methods table (first column) must list METHODS' keys in order"


def resolve_method(class_path: str | None) -> type | None:
    """The registered method a config's ``model.class_path`` names (short or dotted), else None."""
    if not class_path:
        return None
    if "." not in class_path:
        return next((cls for cls in METHODS.values() if cls.__name__ == class_path), None)
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if cls in METHODS.values() else None


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _model_class(path: Path) -> type | None:
    model = _load(path).get("model")
    return resolve_method(model.get("class_path")) if isinstance(model, dict) else None


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_config_and_a_docs_page(name):
    cls = METHODS[name]
    configs = [p.name for p in CONFIGS if _model_class(p) is cls]
    assert configs, f"{name}: no configs/*.yaml with model.class_path {cls.__name__}"
    pages = [p.name for p in sorted((ROOT / "docs" / "methods").glob("*.md"))
             if p.name not in OVERVIEW_PAGES and re.search(rf"\b{cls.__name__}\b", p.read_text(encoding="utf-8"))]
    assert pages, f"{name}: no page in docs/methods/ names {cls.__name__}"


#: the per-method tables of the tests and benchmarks (tiny construction kwargs, timing settings, ...), each
#: keyed by registry name: a method added to METHODS without an entry in one of them fails here (test_cuda's
#: own check skips without CUDA)
PER_METHOD_TABLES = {
    "tests/test_cuda.py TINY": ("test_cuda", "TINY"),
    "tests/test_ddp_methods.py TINY": ("test_ddp_methods", "TINY"),
    "tests/test_evaluation.py TINY_METHODS": ("test_evaluation", "TINY_METHODS"),
    "tests/test_methods_base.py OFFICIAL_SETTINGS": ("test_methods_base", "OFFICIAL_SETTINGS"),
    "benchmarks/throughput.py SETTINGS": ("benchmarks.throughput", "SETTINGS"),
}


@pytest.mark.parametrize("table", list(PER_METHOD_TABLES))
def test_every_per_method_table_covers_the_registry(table):
    module, attr = PER_METHOD_TABLES[table]
    assert list(getattr(importlib.import_module(module), attr)) == list(METHODS), table


def test_benchmarks_cover_the_registry():
    from benchmarks import gpu_check, throughput
    from benchmarks.quality import recipes

    assert list(throughput.METHODS) == list(METHODS)  # AMDIM included, on its own encoder's views
    assert set(gpu_check.QUALITY_METHODS) <= set(METHODS)  # the GPU check's learning run: a chosen few
    assert list(recipes.METHOD_CONFIGS) == list(METHODS)
    for name, config in recipes.METHOD_CONFIGS.items():  # the quality benchmark's CIFAR-10 config of each
        path = ROOT / "configs" / config
        assert path.is_file() and _model_class(path) is METHODS[name], config


# ------------------------------------------------------------------------------------- configs vs defaults
def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:  # PyYAML reads 1e-5 (no dot) as a string; the CLI reads it as the number
            return float(value)
        except ValueError:
            return value
    return value


def same_value(a: Any, b: Any) -> bool:
    return _normal(a) == _normal(b)


def init_args_lines(text: str) -> dict[str, str]:
    """``{key: its line}`` of the direct children of the top-level ``model:`` -> ``init_args:`` block."""
    lines = text.splitlines()
    out: dict[str, str] = {}
    in_model, args_indent, child_indent = False, None, None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            in_model, args_indent = line.startswith("model:"), None
            continue
        if not in_model:
            continue
        if args_indent is None:
            if re.match(r"\s+init_args:", line):
                args_indent = indent
            continue
        if indent <= args_indent:
            args_indent = None  # left init_args (another key of model:)
            continue
        child_indent = indent if child_indent is None else child_indent
        match = re.match(r"\s*([A-Za-z_][\w]*):", line)
        if indent == child_indent and match:
            out[match.group(1)] = line
    return out


def trailing_comment(line: str) -> str | None:
    """The text of the line's trailing ``# comment`` (a ``#`` after whitespace), else None."""
    match = re.search(r"\s#\s*(.*)$", line)
    return match.group(1).strip() if match else None


def config_problems(path: Path) -> list[str]:
    """What ``path`` breaks of the rule in the module docstring (empty: nothing)."""
    text = path.read_text(encoding="utf-8")
    model = yaml.safe_load(text).get("model") or {}
    cls = resolve_method(model.get("class_path"))
    if cls is None:
        return []
    given = model.get("init_args") or {}
    lines = init_args_lines(text)
    assert set(lines) == set(given), f"{path.name}: the line scan found {sorted(lines)}, YAML {sorted(given)}"
    params = inspect.signature(cls).parameters
    problems = []
    for key, value in given.items():
        if key not in params:
            problems.append(f"{key}: not an argument of {cls.__name__}")
            continue
        default = params[key].default
        if default is not inspect.Parameter.empty and same_value(value, default):
            problems.append(f"{key}: {value!r} restates {cls.__name__}'s default: remove the line")
        elif not trailing_comment(lines[key]):
            problems.append(f"{key}: {value!r} differs from {cls.__name__}'s default {default!r}: say why in a "
                            f"trailing comment (`{key}: ...  # why`)")
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_states_only_what_differs_from_the_class_defaults_and_says_why(path):
    problems = config_problems(path)
    assert not problems, f"configs/{path.name}, model.init_args:\n  " + "\n  ".join(problems)


def test_the_config_rule_catches_a_restated_default_and_an_unexplained_difference(tmp_path):
    """The check itself: a restated default, a silent difference, a nested value, a dotted class path."""
    name, cls = next(iter(METHODS.items()))
    params = inspect.signature(cls).parameters
    lr = params["lr"].default
    config = tmp_path / "x.yaml"
    config.write_text(
        "trainer:\n  max_epochs: 1\n"
        f"model:\n  class_path: {cls.__module__}.{cls.__name__}\n  init_args:\n"
        f"    lr: {lr}\n"
        f"    weight_decay: 0.123\n"
        f"    warmup_epochs: 3.0   # short run\n"
        "    backbone_kwargs:\n      width: 16\n"
        "data:\n  batch_size: 4   # not model.init_args\n")
    problems = config_problems(config)
    assert [p.split(":")[0] for p in problems] == ["lr", "weight_decay", "backbone_kwargs"], problems
    assert "restates" in problems[0] and "say why" in problems[1]
    config.write_text(f"model:\n  class_path: {cls.__name__}\n  init_args:\n    weight_decay: 0.123  # why\n"
                      "    backbone_kwargs:  # why\n      width: 16\n")
    assert config_problems(config) == []
    assert same_value([0.8, 0.999], (0.8, 0.999)) and same_value(10, 10.0) and same_value("1e-5", 1.0e-5)
    assert not same_value({"ndf": 8}, None)

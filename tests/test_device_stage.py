"""``DeviceViewStage``'s own contract: its views are the compiled recipe run with its generator, the
generator is seeded from ``torch.initial_seed()`` and the rank, its state round-trips through
``state_dict`` / ``load_state_dict`` (rank 0 continues the stream, other ranks reseed from it), where
JPEGs are decoded, and which batches it leaves alone.

The references are written out here, not read from the stage: the seeding rules, and the views as
``compile_views(recipe)`` applied to the decoded batch with a generator built by those rules.  CPU, offline.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from lightly.transforms import SimCLRTransform

from mvssl_lightning.data import DeviceViewStage, RawImages, UnsupportedOnDevice, compile_views, get_view_recipe
from mvssl_lightning.data.device.decode import decode_to_batch

RECIPE = "two_views_cifar"
CPU = torch.device("cpu")


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A worker-decoded raw batch: ``(n, 3, 32, 32)`` uint8 images and int64 targets."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n)


def _first_seed_generator(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((torch.initial_seed() + 7919 * rank) % 2**63)


def _resumed_generator(state: torch.Tensor, rank: int) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(state)
    if rank != 0:
        digest = hashlib.sha256(state.numpy().tobytes() + rank.to_bytes(4, "little")).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
    return generator


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_generator_is_seeded_from_the_initial_seed_and_the_rank_on_first_use():
    torch.manual_seed(123)
    for rank in (0, 1, 2):
        stage = DeviceViewStage(get_view_recipe(RECIPE))
        assert stage.state_dict() == {}  # nothing to save before the first use
        generator = stage.generator(rank)
        assert torch.equal(generator.get_state(), _first_seed_generator(rank).get_state())
        assert stage.generator(rank + 5) is generator  # the rank is only read on first use


def test_views_are_the_compiled_recipe_run_with_the_stage_generator():
    torch.manual_seed(7)
    images, targets = _batch()
    stage = DeviceViewStage(get_view_recipe(RECIPE))
    views, out_targets = stage((images, targets), rank=1)
    src, sizes = decode_to_batch(images, CPU)
    expected = compile_views(get_view_recipe(RECIPE))(src, sizes, _first_seed_generator(1))
    assert out_targets is targets
    assert _equal(views, expected) and [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2


def test_state_round_trips_and_reproduces_the_same_views():
    torch.manual_seed(11)
    images, targets = _batch()
    saved = DeviceViewStage(get_view_recipe(RECIPE))
    saved((images, targets))
    state = saved.state_dict()
    assert set(state) == {"view_generator"}  # the data module's checkpoint key, unchanged
    expected, _ = saved((images, targets))

    torch.manual_seed(99)  # another run's seed: the loaded state wins over the first-use seeding
    restored = DeviceViewStage(get_view_recipe(RECIPE))
    restored.load_state_dict({"train_position": {"epoch": 0, "batches_done": 1}, **state})
    views, _ = restored((images, targets))
    assert _equal(views, expected)
    src, sizes = decode_to_batch(images, CPU)
    reference = compile_views(get_view_recipe(RECIPE))(src, sizes, _resumed_generator(state["view_generator"], 0))
    assert _equal(views, reference)


def test_resumed_ranks_continue_or_reseed_from_the_saved_stream():
    # only rank 0's generator state is checkpointed: after resume, rank 0 continues it and the
    # other ranks must not copy it (they would draw the same parameters as rank 0)
    saved = DeviceViewStage(get_view_recipe(RECIPE))
    saved.generator()
    state = saved.state_dict()
    expected = torch.rand(4, generator=saved.generator())

    def resumed(rank: int) -> torch.Tensor:
        stage = DeviceViewStage(get_view_recipe(RECIPE))
        stage.load_state_dict(state)
        return torch.rand(4, generator=stage.generator(rank))

    assert torch.equal(resumed(0), expected)
    for rank in (1, 2):
        assert torch.equal(resumed(rank), torch.rand(4, generator=_resumed_generator(state["view_generator"], rank)))
    assert not torch.equal(resumed(1), expected) and not torch.equal(resumed(1), resumed(2))
    assert torch.equal(resumed(1), resumed(1))  # still reproducible


def test_a_state_without_the_generator_changes_nothing():
    torch.manual_seed(5)
    stage = DeviceViewStage(get_view_recipe(RECIPE))
    stage.load_state_dict({"train_position": {"epoch": 1, "batches_done": 0}})
    assert torch.equal(stage.generator(3).get_state(), _first_seed_generator(3).get_state())


@pytest.mark.parametrize(
    ("decode", "on_cuda", "below"),
    [("workers", True, math.inf), ("workers", False, math.inf), ("device", True, 0), ("device", False, 0),
     ("auto", True, 16 * 1024), ("auto", False, math.inf)],
)
def test_where_jpegs_are_decoded(decode, on_cuda, below):
    stage = DeviceViewStage(get_view_recipe(RECIPE), decode=decode)
    assert stage.decode_below(on_cuda) == below
    assert stage.collate_fn(on_cuda).keywords == {"decode_below": below}


def test_other_batches_pass_through_untouched():
    stage = DeviceViewStage(get_view_recipe(RECIPE))
    floats = (torch.rand(2, 3, 8, 8), torch.arange(2))
    triple = (*_batch(2), torch.arange(2))
    assert stage(floats) is floats and stage(triple) is triple and stage("x") == "x"
    assert stage.state_dict() == {}  # nothing drawn
    raw, targets = RawImages([_batch(1)[0][0], _batch(1, seed=1)[0][0]]), torch.arange(2)
    assert len(stage((raw, targets))[0]) == 2  # RawImages are views' input too


def test_a_recipe_with_no_device_counterpart_is_refused_with_its_name():
    with pytest.raises(UnsupportedOnDevice, match="RandomRotation"):
        DeviceViewStage(SimCLRTransform(input_size=32, rr_prob=0.5, rr_degrees=15))

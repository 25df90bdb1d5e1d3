"""The device decode's memory bound (issue 24, item 5): a batch padded to its largest image is bounded by
resizing, on decode, images larger than the recipe's crops can use. CPU, offline, mixed-size JPEGs.

References: PIL's antialiased bilinear resize (``Image.resize(..., BILINEAR)``, which filters like
``F.interpolate(antialias=True)``), libjpeg-turbo decoding through ``torchvision.io.decode_jpeg`` on the CPU,
and the closed form of the bound ``ceil(S * sqrt(max(ratio) / min scale))``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from mvssl_lightning.data import DeviceViewStage, RawImages, get_view_recipe
from mvssl_lightning.data.device.decode import decode_to_batch, shrink_to
from mvssl_lightning.data.device.stage import max_source_side

CPU = torch.device("cpu")


def _jpeg(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth photo-like JPEG (gradients + a few blobs) of ``h x w``, as file bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 100 * np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(1, 3) + c))
                    for c in range(3)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_the_bound_is_the_largest_crop_the_recipe_needs():
    # ImageNet's RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)): 224 * sqrt((4/3) / 0.08)
    stage = DeviceViewStage(get_view_recipe("two_views"))
    assert stage.max_side == max_source_side(stage.views) == math.ceil(224 * math.sqrt((4 / 3) / 0.08)) == 915
    # the smallest crop of a square image at that side, at the most elongated ratio, is >= 224 px across
    area = 0.08 * 915**2
    assert min(math.sqrt(area * 4 / 3), math.sqrt(area * 3 / 4)) >= 224
    assert DeviceViewStage(get_view_recipe("two_views"), max_side=None).max_side is None
    assert DeviceViewStage(get_view_recipe("two_views"), max_side=300).max_side == 300


def test_a_large_photo_no_longer_sets_the_padded_size_of_the_batch():
    sizes = [(2000, 1500), (375, 500), (64, 48), (1200, 1600)]
    files = [_jpeg(h, w, i) for i, (h, w) in enumerate(sizes)]
    raw = RawImages(files)
    full, full_sizes = decode_to_batch(raw, CPU)  # unbounded: padded to 2000 x 1600
    assert tuple(full.shape) == (4, 3, 2000, 1600)
    batch, got = decode_to_batch(raw, CPU, max_side=915)
    assert batch.numel() <= 4 * 3 * 915**2  # the bound, whatever the photos
    expected = [(915, 686), (375, 500), (64, 48), (686, 915)]  # longer side 915, aspect kept; small ones as they are
    assert [tuple(s) for s in got.tolist()] == expected
    for i, (h, w) in enumerate(expected):
        decoded = decode_jpeg(files[i])
        if (h, w) == sizes[i]:
            assert torch.equal(batch[i, :, :h, :w], decoded)  # untouched
        else:  # an antialiased bilinear resize of the decoded photo (PIL's, as reference)
            ref = np.asarray(Image.fromarray(decoded.permute(1, 2, 0).numpy()).resize((w, h), Image.BILINEAR))
            diff = (batch[i, :, :h, :w].permute(1, 2, 0).int() - torch.from_numpy(ref.copy()).int()).abs()
            assert diff.float().mean() < 1.0 and diff.max() <= 8
    with pytest.raises(ValueError, match="max_side"):
        decode_to_batch(raw, CPU, max_side=0)


def test_shrink_keeps_small_images_and_the_aspect_ratio():
    img = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    assert shrink_to(img, 40) is img
    assert tuple(shrink_to(img, 20).shape) == (3, 20, 15)
    assert tuple(shrink_to(torch.zeros(3, 1, 5000, dtype=torch.uint8), 100).shape) == (3, 1, 100)


def test_views_from_a_bounded_batch_cover_the_same_regions():
    # a crop drawn relative to the image covers the same region of the smaller image: with the same random
    # stream, the views of the bounded and of the full-size batch agree up to resampling
    torch.manual_seed(0)
    files = [_jpeg(1800, 1400, 10), _jpeg(300, 400, 11)]
    raw = RawImages(files)
    full = DeviceViewStage(get_view_recipe("two_views"), decode="device", max_side=None)
    bounded = DeviceViewStage(get_view_recipe("two_views"), decode="device")
    assert bounded.max_side == 915
    a = full.make_views(raw, CPU)
    b = bounded.make_views(raw, CPU)
    assert [tuple(v.shape) for v in a] == [tuple(v.shape) for v in b] == [(2, 3, 224, 224)] * 2
    for va, vb in zip(a, b):
        assert (va - vb).abs().mean() < 0.02  # (normalised units) resampling, not different regions


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_decode_never_overwrites_memory_that_queued_kernels_still_read():
    # pytorch/vision#9606: nvJPEG writes from a private stream into blocks the caller's stream freed while
    # its queued kernels still read them. Each round: blocks of the decoded images' size hold known values,
    # a long kernel is queued, then one reduction per block; the blocks are freed and the batch decoded;
    # the reductions must see the values they were given
    dev = torch.device("cuda")
    files = [_jpeg(384, 512, i) for i in range(6)]
    raw = RawImages(files)
    n = 3 * 384 * 512
    wrong = 0
    for _ in range(10):
        blocks = [torch.full((n,), v + 1, dtype=torch.uint8, device=dev) for v in range(len(files))]
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # keeps the reductions below queued while the decoder runs
        sums = [b.sum() for b in blocks]
        del blocks
        batch, sizes = decode_to_batch(raw, dev)
        torch.cuda.synchronize()
        wrong += sum(int(s.item()) != (v + 1) * n for v, s in enumerate(sums))
        assert tuple(batch.shape) == (6, 3, 384, 512)
    assert wrong == 0

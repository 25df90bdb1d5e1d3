"""Device view ops against independent references: torchvision's per-image functions and samplers,
Pillow, numpy; parameter distributions over many draws.  CPU only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from mvssl_lightning.data.device.color import (
    DeviceColorJitter,
    DeviceGaussianBlur,
    DeviceGrayscale,
    DeviceNormalize,
    DeviceSolarize,
    adjust_hue,
    gaussian_blur,
)
from mvssl_lightning.data.device.decode import pad_images
from mvssl_lightning.data.device.geometry import (
    DeviceFlip,
    DeviceRotate90,
    DeviceTranslateReflect,
    crop_patches,
    resized_crops,
    sample_crop_boxes,
)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance between the empirical CDFs)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def within_sampling_error(hits: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def smooth_images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Random smooth RGB images in [0, 1] (low-frequency content, as natural images)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------- crops
@pytest.mark.parametrize("hw", [(32, 32), (48, 80), (10, 200)])
@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.3, 1.0), (0.7, 1.4))])
def test_crop_boxes_follow_torchvision_random_resized_crop(hw, scale, ratio):
    h, w = hw
    n = 6000
    g = torch.Generator().manual_seed(1)
    ours = sample_crop_boxes(torch.full((n,), h), torch.full((n,), w), scale, ratio, g).numpy()
    torch.manual_seed(2)
    img = torch.zeros(1, h, w)
    ref = np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    assert (ours[:, :2] >= 0).all()
    for stat in (
        lambda b: b[:, 2] * b[:, 3] / (h * w),  # area fraction
        lambda b: np.log(b[:, 3] / b[:, 2]),  # aspect ratio
        lambda b: (b[:, 0] + b[:, 2] / 2) / h,  # vertical centre
        lambda b: (b[:, 1] + b[:, 3] / 2) / w,  # horizontal centre
    ):
        assert ks_statistic(stat(ours), stat(ref)) < 0.04  # 5 % critical value at n=6000 is 0.025


def test_crop_boxes_fall_back_to_the_central_crop_like_torchvision():
    # an image so elongated that no attempt with ratio in [3/4, 4/3] and scale >= 0.9 fits
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(torch.tensor([4]), torch.tensor([400]), (0.9, 1.0), (3 / 4, 4 / 3), g)
    torch.manual_seed(0)
    reference = T.RandomResizedCrop.get_params(torch.zeros(1, 4, 400), [0.9, 1.0], [3 / 4, 4 / 3])
    assert tuple(boxes[0].tolist()) == reference


def test_resized_crops_equal_torchvision_resized_crop():
    x = smooth_images(3, size=40)
    boxes = torch.tensor([[0, 0, 40, 40], [5, 7, 20, 30], [10, 2, 12, 9]])
    out = resized_crops(x, boxes, torch.arange(3), 16)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[i], top, left, h, w, [16, 16], antialias=True)
        assert (out[i] - ref).abs().mean() < 0.01, i
    # an integer crop at its own size is copied exactly, and uint8 sources come out in [0, 1]
    u8 = (x * 255).round().to(torch.uint8)
    same = resized_crops(u8, torch.tensor([[3, 4, 16, 16]]), torch.tensor([1]), 16)
    torch.testing.assert_close(same[0], u8[1, :, 3:19, 4:20].float() / 255)


def test_bicubic_enlarged_crops_match_pillow():
    u8 = (smooth_images(2, size=40) * 255).round().to(torch.uint8)
    u8[1] = torch.randint(0, 256, (3, 40, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 16, 16], [5, 7, 9, 13], [30, 25, 10, 15], [2, 3, 16, 4]])
    index = torch.tensor([0, 1, 0, 1])
    out = resized_crops(u8, boxes, index, 16, bicubic=True)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        pil = TF.to_pil_image(u8[index[k]])
        ref = TF.pil_to_tensor(TF.resized_crop(pil, top, left, h, w, [16, 16], T.InterpolationMode.BICUBIC))
        diff = (out[k] * 255 - ref.float()).abs()
        assert diff.max() <= 1.01, (k, diff.max())  # Pillow rounds to uint8
    # a crop that shrinks keeps the area-averaged resample
    shrink = resized_crops(u8, torch.tensor([[0, 0, 40, 40]]), torch.tensor([0]), 16, bicubic=True)
    torch.testing.assert_close(shrink, resized_crops(u8, torch.tensor([[0, 0, 40, 40]]), torch.tensor([0]), 16))


def test_crops_of_padded_images_equal_crops_of_the_image_alone():
    small = (smooth_images(1, size=30)[0, :, :20, :] * 255).round().to(torch.uint8)  # 20 x 30
    big = torch.zeros(3, 50, 40, dtype=torch.uint8)
    batch, sizes = pad_images([big, small])
    assert batch.shape == (2, 3, 50, 40) and sizes.tolist() == [[50, 40], [20, 30]]
    boxes = torch.tensor([[0, 0, 20, 30], [8, 12, 12, 18]])  # whole image; crop at the corner
    out = resized_crops(batch, boxes, torch.tensor([1, 1]), 24)
    alone = resized_crops(small[None], boxes, torch.tensor([0, 0]), 24)
    torch.testing.assert_close(out, alone)


# ----------------------------------------------------------------------------- flips, rotation, translation
def test_flip_probability_and_effect():
    g = torch.Generator().manual_seed(0)
    step = DeviceFlip(0.3)
    params = step.sample(20000, g)
    assert within_sampling_error(int(params["flip"].sum()), 20000, 0.3)
    x = smooth_images(4)
    p = {"flip": torch.tensor([True, False, True, False])}
    out = step.apply(x, p)
    torch.testing.assert_close(out[0], TF.hflip(x[0]))
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(DeviceFlip(1.0, dim=-2).apply(x, {"flip": torch.ones(4, dtype=torch.bool)}), TF.vflip(x))


def test_rotate90_matches_torchvision_rotate():
    x = smooth_images(2)
    out = DeviceRotate90(1.0).apply(x, {"rotate": torch.tensor([True, False])})
    torch.testing.assert_close(out[0], TF.rotate(x[0], 90))
    torch.testing.assert_close(out[1], x[1])


def test_translate_with_reflect_matches_numpy_reference():
    x = smooth_images(3, size=12)
    shift = torch.tensor([[2, -3], [0, 0], [-4, 4]])  # (dx, dy)
    out = DeviceTranslateReflect(4).apply(x, {"shift": shift})
    for i, (dx, dy) in enumerate(shift.tolist()):
        padded = np.pad(x[i].numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        ref = padded[:, 4 - dy:4 - dy + 12, 4 - dx:4 - dx + 12]
        np.testing.assert_allclose(out[i].numpy(), ref)
    params = DeviceTranslateReflect(4, p=0.8).sample(20000, torch.Generator().manual_seed(0))
    moved = (params["shift"] != 0).any(1)
    # P(moved) = 0.8 * (1 - 1/81): the zero shift is one of 81 equally likely
    assert within_sampling_error(int(moved.sum()), 20000, 0.8 * (1 - 1 / 81))
    assert set(params["shift"].unique().tolist()) == set(range(-4, 5))


def test_jigsaw_patches_are_cells_of_the_crop():
    x = torch.arange(2 * 3 * 30 * 30, dtype=torch.float32).view(2, 3, 30, 30)
    patches = crop_patches(x, grid=3, cell=10, patch=8, generator=torch.Generator().manual_seed(0))
    assert len(patches) == 9 and patches[0].shape == (2, 3, 8, 8)
    for k, p in enumerate(patches):
        for b in range(2):
            flat = int(p[b, 0, 0, 0]) - b * 3 * 900
            top, left = flat // 30, flat % 30
            assert (k // 3) * 10 <= top <= (k // 3) * 10 + 2 and (k % 3) * 10 <= left <= (k % 3) * 10 + 2
            torch.testing.assert_close(p[b], x[b, :, top:top + 8, left:left + 8])


# ----------------------------------------------------------------------------- colour
def test_color_jitter_ops_match_torchvision_per_image():
    x = smooth_images(8)
    jitter = DeviceColorJitter((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.2, 0.2), p=1.0)
    g = torch.Generator().manual_seed(3)
    params = jitter.sample(8, g)
    out = jitter.apply(x, params)
    # rebuild each image's order and factors from the parameters and apply torchvision's functions
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(8):
        ref = x[i]
        for pos in range(4):
            for op in range(4):
                idx = params[f"idx{pos}_{op}"].tolist()
                if i in idx:
                    ref = fns[op](ref, float(params[f"factor{pos}_{op}"][idx.index(i)]))
        # torchvision's luma weight for red is 0.2989, Pillow's (and ours) 0.299
        torch.testing.assert_close(out[i], ref, atol=2e-4, rtol=0)


def test_color_jitter_parameter_distributions():
    n = 24000
    jitter = DeviceColorJitter.from_strengths(0.4, 0.4, 0.2, 0.1, p=0.8)
    params = jitter.sample(n, torch.Generator().manual_seed(0))
    chosen = torch.zeros(n, dtype=torch.long)
    orders = torch.full((n, 4), -1)
    ranges = [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]
    for op in range(4):
        factors = torch.cat([params[f"factor{pos}_{op}"] for pos in range(4)])
        lo, hi = ranges[op]
        assert factors.min() >= lo and factors.max() <= hi
        ref = np.random.default_rng(op).uniform(lo, hi, len(factors))
        assert ks_statistic(factors.numpy(), ref) < 0.03
        for pos in range(4):
            idx = params[f"idx{pos}_{op}"]
            chosen[idx] += 1
            orders[idx, pos] = op
    applied = chosen == 4
    assert ((chosen == 0) | applied).all()  # all four ops or none
    assert within_sampling_error(int(applied.sum()), n, 0.8)
    # every one of the 24 orders equally likely
    perms = {tuple(o) for o in orders[applied].tolist()}
    assert len(perms) == 24
    codes = (orders[applied] * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1]
    m = int(applied.sum())
    assert all(within_sampling_error(int(c), m, 1 / 24) for c in counts)


def test_color_jitter_skips_zero_strengths():
    jitter = DeviceColorJitter.from_strengths(0.4, 0.0, 0.0, 0.0)
    assert jitter.ranges[1:] == (None, None, None)
    x = smooth_images(2)
    params = jitter.sample(2, torch.Generator().manual_seed(0))
    out = jitter.apply(x, params)
    assert set(params) == {f"{kind}{pos}_0" for kind in ("idx", "factor") for pos in range(4)}
    factor = torch.zeros(2)
    for pos in range(4):
        factor[params[f"idx{pos}_0"]] = params[f"factor{pos}_0"]
    assert (factor > 0).all()
    torch.testing.assert_close(out, (x * factor.view(-1, 1, 1, 1)).clamp(0, 1))


def test_hue_of_gray_and_full_turn():
    x = smooth_images(3)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(3)), x, atol=1e-5, rtol=0)
    gray = x.mean(1, keepdim=True).expand_as(x)
    torch.testing.assert_close(adjust_hue(gray, torch.tensor([0.3, -0.2, 0.5])), gray, atol=1e-6, rtol=0)


def test_grayscale_matches_torchvision_and_probability():
    x = smooth_images(4)
    out = DeviceGrayscale(1.0).apply(x, {"gray": torch.tensor([True, True, False, True])})
    torch.testing.assert_close(out[0], TF.rgb_to_grayscale(x[0], num_output_channels=3), atol=1e-4, rtol=0)
    u8 = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(u8).convert("L"), dtype=np.float32) / 255
    ours = DeviceGrayscale(1.0).apply(torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255,
                                      {"gray": torch.tensor([True])})
    assert np.abs(ours[0, 0].numpy() - pil).max() <= 1 / 255 + 1e-6
    torch.testing.assert_close(out[2], x[2])
    params = DeviceGrayscale(0.2).sample(20000, torch.Generator().manual_seed(0))
    assert within_sampling_error(int(params["gray"].sum()), 20000, 0.2)


def test_fixed_kernel_blur_matches_torchvision_gaussian_blur():
    x = smooth_images(3, size=32) + 0.1 * torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(x, sigma, radius=11, padding_mode="reflect")
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [23, 23], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_radius_blur_matches_pillow_gaussian_blur():
    rng = np.random.default_rng(0)
    base = (smooth_images(1, size=48)[0] * 255).permute(1, 2, 0).numpy()
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).round().astype(np.uint8)
    for sigma in (0.5, 1.0, 2.0):
        ref = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float32) / 255
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        out = gaussian_blur(x, torch.tensor([sigma]), radius=6)[0].permute(1, 2, 0).numpy()
        # Pillow approximates the Gaussian by box blurs in uint8
        assert np.abs(out - ref)[4:-4, 4:-4].mean() < 2.5 / 255, sigma


def test_blur_probability_and_sigma_range():
    step = DeviceGaussianBlur(0.5, (0.1, 2.0))
    params = step.sample(20000, torch.Generator().manual_seed(0))
    assert within_sampling_error(len(params["idx"]), 20000, 0.5)
    s = params["sigma"].numpy()
    assert ks_statistic(s, np.random.default_rng(0).uniform(0.1, 2.0, len(s))) < 0.03
    x = smooth_images(2)
    out = step.apply(x, {"idx": torch.tensor([1]), "sigma": torch.tensor([1.5])})
    torch.testing.assert_close(out[0], x[0])
    assert not torch.allclose(out[1], x[1])


def test_solarize_matches_pillow_and_probability():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, -1)
    ref = np.asarray(Image.fromarray(arr).point(lambda v: 255 - v if v >= 128 else v), dtype=np.float32) / 255
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    out = DeviceSolarize(1.0).apply(x, {"solarize": torch.tensor([True])})
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    params = DeviceSolarize(0.2).sample(20000, torch.Generator().manual_seed(0))
    assert within_sampling_error(int(params["solarize"].sum()), 20000, 0.2)


def test_normalize_matches_torchvision():
    x = smooth_images(2)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
    torch.testing.assert_close(DeviceNormalize(mean, std)(x, torch.Generator()), TF.normalize(x, mean, std))

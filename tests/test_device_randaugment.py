"""DeviceRandAugment against independent references: PIL per op, per-sample batching, parameter laws.

References: :func:`mvssl_lightning.data.views.infomin.rand_augment_op` on PIL images (the CPU recipe),
the closed-form moments of a clipped normal, binomial / chi-square bounds for the discrete draws.
Images: embedded CIFAR-10 images and random low-frequency patterns, quantised to uint8 and
resized to a non-square 64 x 48 (W x H) so that a swapped axis or a wrong rotation sign shows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mvssl_lightning.data.datasets import NpzImageDataset, embedded_default_path
from mvssl_lightning.data.device.randaugment import GEOMETRIC_OPS, DeviceRandAugment
from mvssl_lightning.data.views.infomin import RAND_AUGMENT_OPS, InfoMinRandAugment, rand_augment_op

W, H = 64, 48
BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC


def _images() -> list[Image.Image]:
    ds = NpzImageDataset(embedded_default_path(), "train")
    imgs = [ds.load_image(i).resize((W, H), BICUBIC) for i in (0, 7, 21)]
    rng = np.random.default_rng(0)
    for _ in range(3):  # smooth random colour patterns with a few sharp edges
        low = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((W, H), BICUBIC)
        arr = np.array(img)
        arr[rng.integers(0, H):, rng.integers(0, W):] //= 2
        imgs.append(Image.fromarray(arr))
    return imgs


IMAGES = _images()


def _to_tensor(imgs: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in imgs]).float() / 255.0


X = _to_tensor(IMAGES)


def _params(n: int, op: list[int], level: list[float], sign: list[float], bicubic: list[bool]) -> dict:
    return {
        "op": torch.tensor(op, dtype=torch.int64).view(n, -1),
        "apply": torch.ones(n, len(op) // n, dtype=torch.bool),
        "level": torch.tensor(level, dtype=torch.float32).view(n, -1),
        "sign": torch.tensor(sign, dtype=torch.float32).view(n, -1),
        "bicubic": torch.tensor(bicubic, dtype=torch.bool).view(n, -1),
    }


# per-op tolerances on |device - PIL| in grey levels (of 255): (mean over the image, max)
EXACT = (1e-4, 1e-4)  # integer LUT ops on uint8-quantised inputs: identical
TOL = {
    "AutoContrast": (1.0, 1.01),  # PIL truncates i * 255 / (hi - lo)
    "Equalize": EXACT, "Invert": EXACT, "PosterizeTpu": EXACT, "Solarize": EXACT, "SolarizeAdd": EXACT,
    # ImageEnhance: PIL rounds the grayscale image and truncates the blend to uint8
    "Color": (1.0, 2.0), "Contrast": (1.0, 2.5), "Brightness": (1.0, 1.01), "Sharpness": (1.0, 2.0),
}
# geometric ops: PIL interpolates the same uint8 values and truncates; a source point that lands on
# the image edge may switch between image and fill (float32 vs float64 coordinates): a tiny fraction.
GEOM_TOL = (1.0, 2.0)  # mean, and the bound that all but GEOM_OUTLIERS of the pixels respect
GEOM_OUTLIERS = 0.002

LEVELS = (0.0, 2.5, 5.5, 8.7, 10.0)


@pytest.mark.parametrize("name,fill", [(name, (124, 116, 104)) for name in RAND_AUGMENT_OPS]
                         + [(name, (255, 0, 30)) for name in GEOMETRIC_OPS])
def test_each_op_matches_pil(name, fill):
    step = DeviceRandAugment(num_ops=1, ops=RAND_AUGMENT_OPS, fill=fill)
    code = RAND_AUGMENT_OPS.index(name)
    # Pillow >= 10 rejects posterize(bits=0) (level < 2.5); checked against the LUT below instead.
    levels = [lv for lv in LEVELS if not (name == "PosterizeTpu" and lv < 2.5)]
    configs = [(lv, sg, bc) for lv in levels for sg in (-1.0, 1.0) for bc in (False, True)]
    # one batch holding every (image, level, sign, resample) combination: per-sample parameters
    imgs = [im for _ in configs for im in IMAGES]
    cfg = [c for c in configs for _ in IMAGES]
    n = len(imgs)
    params = _params(n, [code] * n, [c[0] for c in cfg], [c[1] for c in cfg], [c[2] for c in cfg])
    out = step.apply(_to_tensor(imgs), params)
    ref = _to_tensor([
        rand_augment_op(im, name, float(torch.tensor(lv, dtype=torch.float32)), fill, BICUBIC if bc else BILINEAR, sg)
        for im, (lv, sg, bc) in zip(imgs, cfg)
    ])
    diff = (out - ref).abs() * 255.0
    per_image_mean = diff.mean(dim=(1, 2, 3))
    if name in GEOMETRIC_OPS:
        assert per_image_mean.max() <= GEOM_TOL[0], per_image_mean.max()
        assert (diff > GEOM_TOL[1]).float().mean() <= GEOM_OUTLIERS
    else:
        mean_tol, max_tol = TOL[name]
        assert per_image_mean.max() <= mean_tol, per_image_mean.max()
        assert diff.max() <= max_tol, diff.max()


def test_posterize_zero_bits_is_black_like_the_official_lut():
    # official / Pillow < 10: lut = i & ~(2 ** 8 - 1) = 0 for int(4 r) = 0 bits
    step = DeviceRandAugment(num_ops=1, ops=("PosterizeTpu",))
    n = X.shape[0]
    out = step.apply(X, _params(n, [0] * n, [2.4] * n, [1.0] * n, [False] * n))
    assert torch.equal(out, torch.zeros_like(X))


def test_constant_image_edge_cases():
    # AutoContrast / Equalize leave a one-level channel alone (PIL: "don't bother"), no NaN
    x = torch.full((2, 3, 8, 8), 0.4)
    x[1, 2] = 0.0
    for name in ("AutoContrast", "Equalize"):
        step = DeviceRandAugment(num_ops=1, ops=(name,))
        out = step.apply(x, _params(2, [0, 0], [10.0, 10.0], [1.0, 1.0], [False, False]))
        pil = [Image.fromarray((x[i].permute(1, 2, 0) * 255).round().byte().numpy()) for i in range(2)]
        ref = _to_tensor([rand_augment_op(im, name, 10.0) for im in pil])
        assert torch.allclose(out, ref, atol=1e-6)


def test_mixed_batch_equals_each_sample_alone():
    step = DeviceRandAugment(num_ops=3, magnitude=7.0, magnitude_std=3.0, prob=0.8)
    x = X.repeat(4, 1, 1, 1)  # 24 images
    params = step.sample(x.shape[0], torch.Generator().manual_seed(3))
    chosen = params["op"][params["apply"]]
    assert len(set(chosen.tolist())) >= 10  # the batch really mixes ops
    out = step.apply(x, params)
    for i in range(x.shape[0]):
        # the per-sample draws only; the op selections are rebuilt for the single image
        alone = step.apply(x[i:i + 1], {k: params[k][i:i + 1] for k in ("op", "apply", "level", "sign", "bicubic")})
        assert torch.allclose(out[i:i + 1], alone, atol=2e-6), i


def test_chain_matches_pil_chain():
    # whole recipe (2 rounds) against rand_augment_op applied round by round with the same draws
    step = DeviceRandAugment(num_ops=2, prob=1.0)
    x = X.repeat(5, 1, 1, 1)
    imgs = IMAGES * 5
    p = step.sample(x.shape[0], torch.Generator().manual_seed(11))
    out = step.apply(x, p)
    refs = []
    for i, im in enumerate(imgs):
        for k in range(2):
            im = rand_augment_op(im, step.ops[int(p["op"][i, k])], float(p["level"][i, k]), step.fill,
                                 BICUBIC if bool(p["bicubic"][i, k]) else BILINEAR, float(p["sign"][i, k]))
        refs.append(im)
    diff = (out - _to_tensor(refs)).abs() * 255.0
    # PIL rounds to uint8 between the rounds, the device path stays float: a level or two at most on
    # average (Equalize after a float op can move a whole histogram bin, hence the looser per-image bound)
    assert diff.mean() <= 1.0, diff.mean()
    assert diff.mean(dim=(1, 2, 3)).max() <= 3.0


# ---------------------------------------------------------------------------------------------
# parameter distributions
# ---------------------------------------------------------------------------------------------


def _clipped_normal_moments(m: float, s: float, lo: float = 0.0, hi: float = 10.0) -> tuple[float, float]:
    """Mean and std of clip(N(m, s^2), lo, hi) in closed form."""
    if s == 0:
        v = min(hi, max(lo, m))
        return v, 0.0
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # noqa: E731
    a, b = (lo - m) / s, (hi - m) / s
    pa, pb = cdf(a), cdf(b)
    mass = pb - pa
    mean = lo * pa + hi * (1 - pb) + m * mass + s * (pdf(a) - pdf(b))
    ez2 = mass + a * pdf(a) - b * pdf(b)  # integral of z^2 phi over [a, b]
    second = lo ** 2 * pa + hi ** 2 * (1 - pb) + m * m * mass + 2 * m * s * (pdf(a) - pdf(b)) + s * s * ez2
    return mean, math.sqrt(max(0.0, second - mean * mean))


@pytest.mark.parametrize("magnitude,std,prob", [(10.0, 0.5, 0.5), (5.0, 3.0, 0.3), (4.0, 0.0, 1.0)])
def test_parameter_distributions(magnitude, std, prob):
    n, k = 20_000, 2
    step = DeviceRandAugment(num_ops=k, magnitude=magnitude, magnitude_std=std, prob=prob)
    p = step.sample(n, torch.Generator().manual_seed(0))
    assert p["op"].shape == p["apply"].shape == p["level"].shape == p["sign"].shape == p["bicubic"].shape == (n, k)
    assert p["op"].dtype == torch.int64 and p["apply"].dtype == torch.bool and p["bicubic"].dtype == torch.bool
    assert p["level"].dtype == torch.float32 and p["sign"].dtype == torch.float32
    total = n * k
    # op uniform over the 15 ops: chi-square (14 dof; 0.999 quantile 36.1) and each within 4 sigma
    counts = torch.bincount(p["op"].view(-1), minlength=len(RAND_AUGMENT_OPS)).double()
    assert counts.numel() == len(RAND_AUGMENT_OPS)
    expected = total / len(RAND_AUGMENT_OPS)
    assert float(((counts - expected) ** 2 / expected).sum()) < 36.1
    q = 1 / len(RAND_AUGMENT_OPS)
    assert float((counts / total - q).abs().max()) <= 4 * math.sqrt(q * (1 - q) / total)

    def near(frac: float, p0: float) -> bool:
        return abs(frac - p0) <= 4 * math.sqrt(p0 * (1 - p0) / total) + 1e-12

    assert near(p["apply"].double().mean().item(), prob)
    assert set(p["sign"].unique().tolist()) <= {-1.0, 1.0}
    assert near((p["sign"] < 0).double().mean().item(), 0.5)
    assert near(p["bicubic"].double().mean().item(), 0.5)
    level = p["level"].double()
    assert level.min() >= 0 and level.max() <= 10
    mean, sd = _clipped_normal_moments(magnitude, std)
    assert abs(level.mean().item() - mean) <= 4 * sd / math.sqrt(total) + 1e-6
    assert abs(level.std().item() - sd) <= 0.03 * sd + 1e-6
    if std > 0 and magnitude == 10.0:
        assert near((level == 10.0).double().mean().item(), 0.5)  # half the draws clip at the top


def test_sample_is_independent_across_rounds_and_samples():
    step = DeviceRandAugment(num_ops=2)
    p = step.sample(20_000, torch.Generator().manual_seed(1))
    same = (p["op"][:, 0] == p["op"][:, 1]).double().mean().item()
    assert abs(same - 1 / 15) <= 4 * math.sqrt((1 / 15) * (14 / 15) / 20_000)
    corr = torch.corrcoef(torch.stack([p["level"][:, 0], p["level"][:, 1]]))[0, 1].item()
    assert abs(corr) < 0.04


# ---------------------------------------------------------------------------------------------
# protocol
# ---------------------------------------------------------------------------------------------


def test_seeded_determinism_range_shape_dtype():
    step = DeviceRandAugment(num_ops=2, prob=0.9)
    x = torch.cat([X, torch.zeros(1, 3, H, W), torch.ones(1, 3, H, W)])
    a = step(x, torch.Generator().manual_seed(5))
    b = step(x, torch.Generator().manual_seed(5))
    c = step(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    a64 = step(x.double(), torch.Generator().manual_seed(5))
    assert a64.dtype == torch.float64 and torch.allclose(a64.float(), a, atol=1e-4)
    assert torch.equal(x, torch.cat([X, torch.zeros(1, 3, H, W), torch.ones(1, 3, H, W)]))  # input untouched


def test_batch_of_one_empty_batch_and_empty_subsets():
    step = DeviceRandAugment(num_ops=2, prob=1.0)
    one = step(X[:1], torch.Generator().manual_seed(0))
    assert one.shape == (1, 3, H, W) and torch.isfinite(one).all()
    empty = torch.zeros(0, 3, H, W)
    assert step(empty, torch.Generator().manual_seed(0)).shape == (0, 3, H, W)
    assert torch.equal(DeviceRandAugment(num_ops=0)(X, torch.Generator().manual_seed(0)), X)
    assert torch.equal(DeviceRandAugment(prob=0.0)(X, torch.Generator().manual_seed(0)), X)
    # only Invert chosen: every other op (incl. the geometric group) has an empty subset
    two = DeviceRandAugment(num_ops=1, ops=("Invert", "Rotate"))
    n = X.shape[0]
    out = two.apply(X, _params(n, [0] * n, [10.0] * n, [1.0] * n, [True] * n))
    assert torch.equal(out, 1.0 - X)
    # only Rotate chosen, all samples bicubic (empty bilinear subset) at level 0 (identity)
    out = two.apply(X, _params(n, [1] * n, [0.0] * n, [1.0] * n, [True] * n))
    assert torch.allclose(out, X, atol=1e-6)


def test_from_cpu_copies_settings():
    cpu = InfoMinRandAugment(num_ops=3, magnitude=7.5, magnitude_std=1.25, prob=0.7,
                             ops=("Rotate", "Invert", "Rotate"), fill=(1, 2, 3))
    dev = DeviceRandAugment.from_cpu(cpu)
    assert (dev.num_ops, dev.magnitude, dev.magnitude_std, dev.prob, dev.ops, dev.fill) == (
        3, 7.5, 1.25, 0.7, ("Rotate", "Invert", "Rotate"), (1, 2, 3))
    default = DeviceRandAugment.from_cpu(InfoMinRandAugment())
    assert (default.num_ops, default.magnitude, default.magnitude_std, default.prob, default.ops, default.fill) == (
        2, 10.0, 0.5, 0.5, RAND_AUGMENT_OPS, (124, 116, 104))
    with pytest.raises(ValueError):
        DeviceRandAugment(ops=("Nope",))


def test_repeated_op_names_in_ops():
    # ops may repeat a name (sampling weight); every index of a name runs that op
    step = DeviceRandAugment(num_ops=1, ops=("Invert", "Solarize", "Invert"))
    n = X.shape[0]
    out = step.apply(X, _params(n, [2, 0, 2, 1, 0, 2], [5.0] * n, [1.0] * n, [False] * n))
    assert torch.equal(out[[0, 1, 2, 4, 5]], 1.0 - X[[0, 1, 2, 4, 5]])
    ref = rand_augment_op(IMAGES[3], "Solarize", 5.0)
    assert torch.allclose(out[3:4], _to_tensor([ref]), atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    step = DeviceRandAugment(num_ops=3, magnitude=7.0, magnitude_std=3.0, prob=0.9)
    x = X.repeat(4, 1, 1, 1)
    cpu = step(x, torch.Generator().manual_seed(2))
    gpu = step(x.cuda(), torch.Generator().manual_seed(2)).cpu()
    diff = (gpu - cpu).abs()
    # float rounding may flip a LUT / threshold decision for a pixel on a boundary: rare
    assert diff.mean() <= 1e-3 and (diff > 2 / 255).float().mean() <= 1e-3


def test_equalize_accepts_non_contiguous_input():
    """Channels-last views (a permuted batch) used to crash ``_equalize`` (``.view`` on strided data)."""
    from mvssl_lightning.data.device.randaugment import _equalize

    x = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0)).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    torch.testing.assert_close(_equalize(x), _equalize(x.contiguous()), rtol=0, atol=0)

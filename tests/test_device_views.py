"""The device view pipeline end to end: every recipe compiled with the CPU recipe's parameters,
pixel statistics equal to the CPU path, decoding, determinism, fallback, the data module and a
training run with ``gpu_views: true`` on the CPU."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightly.transforms import SimCLRTransform
from PIL import Image

from mvssl_lightning.cli import run_cli
from mvssl_lightning.data import VIEW_RECIPES, MultiViewDataModule, build_dataset, get_view_recipe
from mvssl_lightning.data.device.color import DeviceColorJitter, DeviceGaussianBlur, DeviceSolarize
from mvssl_lightning.data.device.decode import RawImages, decode_to_batch, raw_collate
from mvssl_lightning.data.device.recipe import UnsupportedOnDevice, compile_views

REPO = Path(__file__).resolve().parents[1]


def _steps(view, cls):
    return [s for s in view.steps if isinstance(s, cls)]


@pytest.mark.parametrize("name", sorted(VIEW_RECIPES))
def test_every_recipe_compiles_with_the_cpu_view_count_and_sizes(name):
    recipe = get_view_recipe(name)
    device = compile_views(recipe)
    assert device.num_views == recipe.num_views
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cpu_views = recipe(img)
    src = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    if name == "amdim_cifar":  # no crop: the views keep the image size, as on the CPU
        src = src[..., :32, :32]
        cpu_views = recipe(img.crop((0, 0, 32, 32)))
    views = device(src, torch.tensor([list(src.shape[-2:])] * 2), torch.Generator().manual_seed(0))
    assert [tuple(v.shape[1:]) for v in views] == [tuple(v.shape) for v in cpu_views]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_mveb_multicrop_parameters_are_the_papers():
    # MVEB (wlj6816/MVEB, project/dataloader.py): blur p (1.0, 0.1, 0.5) for (global 1, global 2, locals),
    # solarize 0.2 on global 2
    device = compile_views(get_view_recipe("mveb_multicrop"))
    g1, g2, local = device.views[0], device.views[1], device.views[2]
    assert all(v is local for v in device.views[2:])
    assert [_steps(v, DeviceGaussianBlur)[0].p for v in (g1, g2, local)] == [1.0, 0.1, 0.5]
    assert [len(_steps(v, DeviceSolarize)) for v in (g1, g2, local)] == [0, 1, 0]
    assert _steps(g2, DeviceSolarize)[0].p == 0.2
    assert (g1.crop.size, g1.crop.scale, local.crop.size, local.crop.scale) == (224, (0.4, 1.0), 96, (0.05, 0.4))
    jitter = _steps(g1, DeviceColorJitter)[0]
    assert jitter.p == 0.8
    np.testing.assert_allclose(
        [x for r in jitter.ranges for x in r], [0.6, 1.4, 0.6, 1.4, 0.8, 1.2, -0.1, 0.1], rtol=1e-6
    )


def test_infomin_has_jigsaw_patches_and_amdim_a_shared_flip():
    infomin = compile_views(get_view_recipe("infomin"))
    assert infomin.views[-1].jigsaw == (3, 85, 64) and infomin.num_views == 11
    blur = _steps(infomin.views[0], DeviceGaussianBlur)[0]
    assert (blur.p, blur.kernel_size, blur.sigmas) == (0.5, 23, (0.1, 2.0))
    assert compile_views(get_view_recipe("amdim_cifar")).shared_flip == 0.5


def test_lightly_transforms_compile_and_unsupported_steps_are_named():
    assert compile_views(SimCLRTransform(input_size=32)).num_views == 2
    with pytest.raises(UnsupportedOnDevice, match="RandomRotation"):
        compile_views(SimCLRTransform(input_size=32, rr_prob=0.5, rr_degrees=15))
    with pytest.raises(UnsupportedOnDevice, match="not a multi-view recipe"):
        compile_views(lambda img: [img])


def test_a_new_recipe_registers_its_device_counterparts_without_editing_device():
    # a recipe module registers its own transform and container; data/device/ is not touched
    import torchvision.transforms as T
    from PIL import ImageOps

    from mvssl_lightning.data import MultiViewRecipe, register_device_recipe, register_device_transform
    from mvssl_lightning.data.device.step import DeviceStep

    class Invert:
        def __call__(self, img):
            return ImageOps.invert(img)

    class DeviceInvert(DeviceStep):
        def __init__(self, p: float = 1.0) -> None:
            self.p = p

        def sample(self, n, generator):
            return {"on": torch.rand(n, generator=generator) < self.p}

        def apply(self, x, params):
            return torch.where(params["on"].view(-1, 1, 1, 1), 1.0 - x, x)

    class SharedFlipRecipe(MultiViewRecipe):
        pass

    view = T.Compose([T.RandomResizedCrop(16), Invert(), T.ToTensor()])
    applied = T.Compose([T.RandomResizedCrop(16), T.RandomApply([Invert()], p=0.5), T.ToTensor()])
    with pytest.raises(UnsupportedOnDevice, match="Invert"):
        compile_views(SharedFlipRecipe([view, view]))
    register_device_transform(Invert, lambda t: DeviceInvert())
    with pytest.raises(UnsupportedOnDevice, match="Invert"):  # registered for plain use only
        compile_views(SharedFlipRecipe([applied]))
    register_device_transform(Invert, lambda t, p: DeviceInvert(p), in_random_apply=True)

    def shared_flip(recipe, device_views):
        device_views.shared_flip = 0.25
        return device_views

    register_device_recipe(SharedFlipRecipe, shared_flip)
    device = compile_views(SharedFlipRecipe([view, view, applied], name="new"))
    assert device.num_views == 3 and device.shared_flip == 0.25 and device.name == "new"
    assert device.views[0] is device.views[1] and device.views[0].crop.size == 16
    assert [type(s) for s in device.views[0].steps] == [DeviceInvert]
    assert [s.p for s in device.views[2].steps] == [0.5]
    assert compile_views(MultiViewRecipe([view])).shared_flip == 0.0  # the hook is the subclass's only
    src = torch.full((2, 3, 20, 20), 255, dtype=torch.uint8)
    out = device(src, torch.tensor([[20, 20]] * 2), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in out] == [(2, 3, 16, 16)] * 3 and torch.allclose(out[0], torch.zeros(()))


@pytest.mark.parametrize("name", ["mveb_multicrop_cifar", "asymmetric_cifar", "amdim_cifar", "infomin_cifar"])
def test_device_views_have_the_pixel_statistics_of_the_cpu_views(name):
    # same images, same recipe: per-view, per-channel mean and std of the normalised pixels agree
    n = 400
    recipe = get_view_recipe(name)
    torch.manual_seed(0)
    cpu_ds = build_dataset("default", split="train", transform=recipe)
    cpu = [cpu_ds[i][0] for i in range(n)]
    raw = build_dataset("default", split="train", raw=True)
    src, sizes = decode_to_batch(RawImages([raw[i][0] for i in range(n)]), torch.device("cpu"))
    views = compile_views(recipe)(src, sizes, torch.Generator().manual_seed(0))
    for k, view in enumerate(views):
        ref = torch.stack([c[k] for c in cpu])
        # means: within 5 standard errors of the difference of two independent sample means
        m_dev, m_cpu = view.mean(dim=(2, 3)), ref.mean(dim=(2, 3))  # (n, 3) per-image channel means
        se = ((m_dev.var(0) + m_cpu.var(0)) / n).sqrt()
        assert ((m_dev.mean(0) - m_cpu.mean(0)).abs() < 5 * se).all(), (k, m_dev.mean(0), m_cpu.mean(0), se)
        # stds: within 8 % (two runs of the CPU path alone differ by up to ~5.5 % at n = 400)
        assert (view.std(dim=(0, 2, 3)) / ref.std(dim=(0, 2, 3)) - 1).abs().max() < 0.08, k


def test_device_views_are_seeded_and_deterministic():
    device = compile_views(get_view_recipe("mveb_multicrop_cifar"))
    raw = build_dataset("default", split="train", raw=True)
    src, sizes = decode_to_batch(RawImages([raw[i][0] for i in range(16)]), torch.device("cpu"))
    a = device(src, sizes, torch.Generator().manual_seed(5))
    b = device(src, sizes, torch.Generator().manual_seed(5))
    c = device(src, sizes, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def _jpeg(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def test_decode_matches_pillow_and_pads_mixed_sizes():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (26, 18, 3), dtype=np.uint8)
    items = [torch.frombuffer(bytearray(_jpeg(a)), dtype=torch.uint8),
             torch.frombuffer(bytearray(_jpeg(b, "PNG")), dtype=torch.uint8),
             torch.from_numpy(a).permute(2, 0, 1).contiguous()]
    batch, sizes = decode_to_batch(RawImages(items), torch.device("cpu"))
    assert batch.shape == (3, 3, 26, 30) and sizes.tolist() == [[20, 30], [26, 18], [20, 30]]
    pil = np.asarray(Image.open(io.BytesIO(_jpeg(a))).convert("RGB"))
    assert np.abs(batch[0, :, :20, :30].permute(1, 2, 0).numpy().astype(int) - pil).max() <= 2
    assert np.array_equal(batch[1, :, :26, :18].permute(1, 2, 0).numpy(), b)  # PNG is lossless
    assert np.array_equal(batch[2, :, :20, :30].permute(1, 2, 0).numpy(), a)


def test_corrupt_bytes_name_their_position():
    good = torch.frombuffer(bytearray(_jpeg(np.zeros((8, 8, 3), np.uint8))), dtype=torch.uint8)
    bad = good.clone()[:40]
    with pytest.raises(ValueError, match="corrupt image at position 1"):
        decode_to_batch(RawImages([good, bad]), torch.device("cpu"))


def test_worker_collate_stacks_equal_sizes_and_keeps_bytes_otherwise():
    raw = build_dataset("default", split="train", raw=True)
    samples = [raw[i] for i in range(4)]
    stacked, targets = raw_collate(samples, decode_below=float("inf"))
    assert isinstance(stacked, torch.Tensor) and stacked.shape == (4, 3, 32, 32) and stacked.dtype == torch.uint8
    assert targets.tolist() == [int(raw.targets[i]) for i in range(4)]
    kept, _ = raw_collate(samples, decode_below=0)
    assert isinstance(kept, RawImages) and all(t.dim() == 1 for t in kept.items)
    # by size: only the files under the threshold are decoded in the worker
    threshold = sorted(t.numel() for t, _ in samples)[2]
    mixed, _ = raw_collate(samples, decode_below=threshold)
    assert [t.dim() for t in mixed.items] == [3 if t.numel() < threshold else 1 for t, _ in samples]


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_datamodule_makes_views_after_transfer(decode):
    dm = MultiViewDataModule(views="two_views_cifar", gpu_views=True, decode=decode, batch_size=8, num_workers=0)
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, RawImages if decode == "device" else torch.Tensor)
    views, out_targets = dm.on_after_batch_transfer((images, targets), 0)
    assert len(views) == 2 and views[0].shape == (8, 3, 32, 32) and out_targets is targets
    # eval batches pass through untouched
    x, y = next(iter(dm.val_dataloader()[1]))
    assert dm.on_after_batch_transfer((x, y), 1)[0] is x


def test_datamodule_generator_state_round_trips():
    dm = MultiViewDataModule(views="two_views_cifar", gpu_views=True, batch_size=8, num_workers=0)
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    dm.on_after_batch_transfer((images, targets), 0)
    state = dm.state_dict()
    assert set(state) == {"view_generator"}  # the checkpoint key of the device views' generator
    expected, _ = dm.on_after_batch_transfer((images, targets), 0)
    restored = MultiViewDataModule(views="two_views_cifar", gpu_views=True, batch_size=8, num_workers=0)
    restored.setup()
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, restored.on_after_batch_transfer((images, targets), 0)[0]))


def test_datamodule_falls_back_to_the_cpu_path_with_a_message():
    dm = MultiViewDataModule(views=SimCLRTransform(input_size=32, rr_prob=0.5, rr_degrees=15),
                             gpu_views=True, batch_size=8, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    assert any("RandomRotation" in str(w.message) and "CPU view pipeline" in str(w.message) for w in caught)
    views, _ = next(iter(dm.train_dataloader()))
    assert isinstance(views, list) and views[0].dtype == torch.float32


def test_imagefolder_with_mixed_sizes_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i, (h, w) in enumerate([(40, 50), (64, 36)]):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                (d / f"{i}.{'jpg' if i == 0 else 'png'}").write_bytes(_jpeg(arr, "JPEG" if i == 0 else "PNG"))
    dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views", view_kwargs={"size": 24},
                             gpu_views=True, decode="device", batch_size=4, num_workers=0)
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, RawImages) and sum(t.dim() == 1 for t in images.items) == 2
    views, _ = dm.on_after_batch_transfer((images, targets), 0)
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2


def test_training_runs_with_gpu_views_on_the_cpu(tmp_path):
    cli = run_cli([
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.gpu_views", "true",
        "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0",
        "--data.batch_size", "16",
    ])
    assert cli.datamodule.device_stage is not None
    assert cli.trainer.global_step == 2
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


def test_datamodule_hands_a_state_loaded_before_setup_to_its_device_stage():
    # a checkpoint can be loaded before setup creates the stage: the stage continues its stream
    saved = MultiViewDataModule(views="two_views_cifar", gpu_views=True, batch_size=8, num_workers=0)
    saved.setup()
    saved.device_stage.generator()
    state = saved.state_dict()
    expected = torch.rand(4, generator=saved.device_stage.generator())
    dm = MultiViewDataModule(views="two_views_cifar", gpu_views=True, batch_size=8, num_workers=0)
    dm.load_state_dict(state)
    dm.setup()
    assert torch.equal(torch.rand(4, generator=dm.device_stage.generator()), expected)

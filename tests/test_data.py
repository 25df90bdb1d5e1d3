"""Tests of mvssl_lightning.data: view recipes, npz/imagefolder datasets, the data module. CPU, offline."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from mvssl_lightning.data import (
    VIEW_RECIPES,
    MultiViewDataModule,
    NpzImageDataset,
    build_dataset,
    embedded_default_path,
    eval_view,
    eval_view_cifar,
    get_view_recipe,
    mveb_multicrop,
)

# Expectations written out independently of the code under test.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"

# name -> (number of views, [size of each view], mean, std)
RECIPE_EXPECTATIONS = {
    "mveb_multicrop": (8, [224, 224] + [96] * 6, IMAGENET_MEAN, IMAGENET_STD),
    "mveb_multicrop_cifar": (8, [32, 32] + [16] * 6, CIFAR_MEAN, CIFAR_STD),
    "two_views": (2, [224, 224], IMAGENET_MEAN, IMAGENET_STD),
    "two_views_cifar": (2, [32, 32], CIFAR_MEAN, CIFAR_STD),
    "asymmetric": (2, [224, 224], IMAGENET_MEAN, IMAGENET_STD),
    "asymmetric_cifar": (2, [32, 32], CIFAR_MEAN, CIFAR_STD),
}


def random_image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random images (JPEG reproduces them closely)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 1, (3, 3))
        out[i] = (255 * (0.5 + 0.4 * np.sin(np.stack([a[k] * 6 * xx + b[k] * 6 * yy + c[k] * 6
                                                        for k in range(3)], -1)))).astype(np.uint8)
    return out


def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode images with Pillow; return (concatenated bytes, offsets) in the npz layout."""
    blobs = []
    for x in images:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return np.concatenate(blobs), offsets


def write_npz(path: Path, n_train: int = 6, n_test: int = 4, **extra) -> dict:
    xtr, xte = smooth_images(n_train, seed=1), smooth_images(n_test, seed=2)
    ytr, yte = np.arange(n_train) % 3, np.arange(n_test) % 3
    jtr, otr = encode(xtr)
    jte, ote = encode(xte)
    arrays = dict(jpeg_train=jtr, offsets_train=otr, y_train=ytr, jpeg_test=jte, offsets_test=ote, y_test=yte)
    arrays.update(extra)
    np.savez(path, **arrays)
    return dict(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def find(compose, cls_name: str):
    return [t for t in compose.transform.transforms if type(t).__name__ == cls_name]


# --------------------------------------------------------------------------- view recipes
@pytest.mark.parametrize("name", sorted(RECIPE_EXPECTATIONS))
def test_recipe_shapes_and_normalisation(name):
    n_views, sizes, mean, std = RECIPE_EXPECTATIONS[name]
    assert name in VIEW_RECIPES
    recipe = get_view_recipe(name)
    assert recipe.num_views == n_views == len(recipe.transforms)
    img = random_image(300, 260) if sizes[0] == 224 else random_image(32, 32)
    views = recipe(img)
    assert isinstance(views, list) and len(views) == n_views
    lo = (0 - torch.tensor(mean)) / torch.tensor(std)
    hi = (1 - torch.tensor(mean)) / torch.tensor(std)
    for v, s in zip(views, sizes):
        assert v.shape == (3, s, s) and v.dtype == torch.float32 and torch.isfinite(v).all()
        per_channel = v.flatten(1)
        assert (per_channel.min(1).values >= lo - 1e-4).all() and (per_channel.max(1).values <= hi + 1e-4).all()


def test_recipe_kwargs_change_sizes():
    recipe = get_view_recipe("mveb_multicrop", global_size=64, local_size=24, n_local=2)
    assert [tuple(v.shape) for v in recipe(random_image())] == [(3, 64, 64)] * 2 + [(3, 24, 24)] * 2


def test_mveb_multicrop_probabilities_follow_the_paper_recipe():
    """MVEB (wlj6816/MVEB, project/dataloader.py): blur 1.0 / 0.1 / 0.5, solarize 0.2 on global 2 only,
    jitter (0.4,0.4,0.2,0.1) p 0.8."""
    recipe = mveb_multicrop()
    assert [find(t, "GaussianBlur")[0].prob for t in recipe.transforms] == [1.0, 0.1] + [0.5] * 6
    assert [find(t, "RandomSolarization")[0].prob for t in recipe.transforms] == [0.0, 0.2] + [0.0] * 6
    for t in recipe.transforms:
        (apply,) = find(t, "RandomApply")
        assert apply.p == 0.8
        cj = apply.transforms[0]
        assert tuple(cj.brightness) == pytest.approx((0.6, 1.4)) and tuple(cj.contrast) == pytest.approx((0.6, 1.4))
        assert tuple(cj.saturation) == pytest.approx((0.8, 1.2)) and tuple(cj.hue) == pytest.approx((-0.1, 0.1))
        assert find(t, "RandomGrayscale")[0].p == 0.2 and find(t, "RandomHorizontalFlip")[0].p == 0.5
        assert "BICUBIC" in str(find(t, "RandomResizedCrop")[0].interpolation)
    scales = [tuple(find(t, "RandomResizedCrop")[0].scale) for t in recipe.transforms]
    assert scales == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 6


def test_mveb_multicrop_solarizes_only_global_2():
    """Behaviour: with solarize p=1 and every other colour op off, only view 1 is inverted above 128."""
    recipe = mveb_multicrop(global_size=16, local_size=8, n_local=2, blur=(0, 0, 0), solarize=1.0,
                            cj_prob=0.0, gray=0.0, normalize=None)
    views = recipe(Image.new("RGB", (40, 40), (200, 200, 200)))
    means = [float(v.mean()) * 255 for v in views]
    assert means[1] == pytest.approx(255 - 200, abs=2)
    for i in (0, 2, 3):
        assert means[i] == pytest.approx(200, abs=2)


def test_asymmetric_views_follow_mec_recipe():
    """MEC (xinliu20/MEC, main_pretrain.py): blur 1.0 / 0.1, solarize 0 / 0.2, crop scale (0.2, 1)."""
    recipe = get_view_recipe("asymmetric")
    assert [find(t, "GaussianBlur")[0].prob for t in recipe.transforms] == [1.0, 0.1]
    assert [find(t, "RandomSolarization")[0].prob for t in recipe.transforms] == [0.0, 0.2]
    assert [tuple(find(t, "RandomResizedCrop")[0].scale) for t in recipe.transforms] == [(0.2, 1.0)] * 2
    views = get_view_recipe("asymmetric_cifar", solarize=(0.0, 1.0), cj_prob=0.0, gray=0.0, normalize=None)(
        Image.new("RGB", (32, 32), (220, 220, 220)))
    assert float(views[0].mean()) * 255 == pytest.approx(220, abs=2)
    assert float(views[1].mean()) * 255 == pytest.approx(35, abs=2)


def test_cifar_recipes_have_no_blur():
    for name in ("mveb_multicrop_cifar", "two_views_cifar", "asymmetric_cifar"):
        assert all(find(t, "GaussianBlur")[0].prob == 0 for t in get_view_recipe(name).transforms)


def test_eval_views():
    img = random_image(320, 300)
    assert eval_view()(img).shape == (3, 224, 224)
    small = random_image(32, 32, seed=3)
    x = eval_view_cifar()(small)
    expected = (np.asarray(small, dtype=np.float32) / 255 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    assert torch.allclose(x, torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-5)


def test_unknown_recipe_name():
    with pytest.raises(ValueError, match="unknown view recipe 'nope'.*mveb_multicrop"):
        get_view_recipe("nope")
    with pytest.raises(ValueError, match="unknown view recipe 'nope'.*two_views_cifar"):
        MultiViewDataModule(views="nope")


# --------------------------------------------------------------------------- npz datasets
def test_npz_jpeg_round_trip(tmp_path):
    path = tmp_path / "tiny.npz"
    ref = write_npz(path, class_names=np.array(["a", "b", "c"]))
    for split in ("train", "test"):
        ds = NpzImageDataset(path, split)
        assert len(ds) == len(ref[f"y_{split}"]) and ds.classes == ["a", "b", "c"]
        for i in range(len(ds)):
            img, y = ds[i]
            assert isinstance(y, int) and y == ref[f"y_{split}"][i]
            diff = np.abs(np.asarray(img, dtype=np.int16) - ref[f"x_{split}"][i].astype(np.int16))
            assert img.mode == "RGB" and img.size == (32, 32) and diff.mean() < 4


def test_npz_raw_arrays_and_mapping(tmp_path):
    x = smooth_images(5, size=8)
    y = np.array([4, 0, 1, 4, 2])
    np.savez(tmp_path / "raw.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    ds = NpzImageDataset(tmp_path / "raw.npz", "train", transform=eval_view_cifar(normalize=None, size=8))
    assert ds.num_classes == 5 and ds.targets.dtype == np.int64
    img, label = ds[3]
    assert label == 4 and torch.equal((img * 255).round().to(torch.uint8), torch.from_numpy(x[3]).permute(2, 0, 1))
    ds2 = NpzImageDataset({"x_test": x[:2], "y_test": y[:2]}, "test")
    assert len(ds2) == 2 and np.array_equal(np.asarray(ds2[1][0]), x[1])


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", jpeg_train=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="offsets_train.*y_train.*x_train"):
        NpzImageDataset(tmp_path / "bad.npz", "train")


def test_npz_corrupt_image(tmp_path):
    x = smooth_images(3)
    jpeg, offsets = encode(x)
    jpeg = jpeg.copy()
    jpeg[offsets[1] : offsets[2]] = 7  # image 1 becomes garbage bytes
    path = tmp_path / "corrupt.npz"
    np.savez(path, jpeg_train=jpeg, offsets_train=offsets, y_train=np.zeros(3, np.int64))
    ds = NpzImageDataset(path, "train")
    ds[0], ds[2]  # the neighbours decode
    with pytest.raises(ValueError, match=r"corrupt image 1 in split 'train' of .*corrupt\.npz"):
        ds[1]


def test_embedded_default_dataset():
    path = embedded_default_path()
    assert path.is_file() and path.stat().st_size < 8_000_000
    train, test = build_dataset("default", split="train"), build_dataset("default", root="/ignored", split="test")
    assert (len(train), len(test)) == (5000, 1000)
    assert np.bincount(train.targets).tolist() == [500] * 10
    assert np.bincount(test.targets).tolist() == [100] * 10
    assert train.classes == CIFAR_CLASSES
    for ds in (train, test):
        for i in (0, len(ds) // 2, len(ds) - 1):
            img, y = ds[i]
            assert img.size == (32, 32) and img.mode == "RGB" and 0 <= y <= 9


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_full_cifar10_npz():
    train = build_dataset("npz", root=str(SHARED_CIFAR), split="train")
    test = build_dataset("npz", root=SHARED_CIFAR, split="test")
    assert (len(train), len(test)) == (50000, 10000)
    assert np.bincount(train.targets).tolist() == [5000] * 10
    for ds in (train, test):
        for i in (0, 12345 % len(ds), len(ds) - 1):
            img, y = ds[i]
            assert img.size == (32, 32) and y == ds.targets[i]
    assert train[0][1] == 0 and train[49999][1] == 9  # stored in class order


# --------------------------------------------------------------------------- build_dataset errors, imagefolder
def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10.*imagefolder.*npz"):
        build_dataset("mnist", "/tmp", "train")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):  # at construction, before any setup
        MultiViewDataModule(dataset="mnist", num_workers=0)


def test_missing_paths(tmp_path):
    missing = tmp_path / "nothing.npz"
    dm = MultiViewDataModule(dataset="npz", data_dir=str(missing), num_workers=0)  # no filesystem access yet
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"imagefolder directory not found: .*train"):
        build_dataset("imagefolder", tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match=r"cifar10 files not found under .*download: true"):
        build_dataset("cifar10", tmp_path, "train", download=False)
    with pytest.raises(FileNotFoundError, match="stl10 files not found.*download: true"):
        build_dataset("stl10", tmp_path, "train", download=False, include_unlabeled=True)


def make_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    make_imagefolder(tmp_path)
    ds = build_dataset("imagefolder", tmp_path, "test")
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    # An ImageNet-style recipe at 32 px: the default eval view follows it (Resize 37, CenterCrop 32).
    dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                             view_kwargs={"size": 32}, batch_size=4, eval_batch_size=6, num_workers=0)
    assert dm.num_classes == 2
    dm.setup("fit")
    views, targets = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 and set(targets.tolist()) <= {0, 1}
    images, targets = next(iter(dm.val_dataloader()[1]))
    # every image once, in the fixed seeded random order of the eval loaders
    assert images.shape == (6, 3, 32, 32) and sorted(targets.tolist()) == [0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- data module
def test_datamodule_train_batch():
    dm = MultiViewDataModule(batch_size=16, num_workers=0, train_subset=64, test_subset=32)
    assert dm.num_views == 8 and dm.num_classes == 10
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 4
    views, targets = next(iter(loader))
    assert isinstance(views, list) and len(views) == 8
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2 + [(16, 3, 16, 16)] * 6
    assert targets.dtype == torch.int64 and targets.shape == (16,) and targets.min() >= 0 and targets.max() <= 9


def test_datamodule_val_loaders():
    dm = MultiViewDataModule(batch_size=16, eval_batch_size=50, num_workers=0, train_subset=120)
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    n_bank = sum(len(y) for _, y in loaders[0])
    assert n_bank == 120  # capped by train_subset, nothing dropped
    seen = []
    for images, targets in loaders[1]:
        assert images.shape[1:] == (3, 32, 32) and targets.dtype == torch.int64
        seen.append(targets)
    assert isinstance(loaders[1].sampler, SequentialSampler)
    # the full test set, each image once, in a fixed random order (a prefix is a random sample)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == [c for c in range(10) for _ in range(100)]
    assert len(order[:100].unique()) == 10


def test_datamodule_subset_is_deterministic():
    a = MultiViewDataModule(num_workers=0, train_subset=100)
    b = MultiViewDataModule(num_workers=0, train_subset=100)
    a.setup(), b.setup()
    assert a.train_dataset.indices == b.train_dataset.indices == sorted(a.eval_train_dataset.indices)
    assert a.eval_train_dataset.indices == b.eval_train_dataset.indices  # the same seeded eval order
    assert len(set(a.train_dataset.indices)) == 100


def test_datamodule_accepts_lightly_transform():
    from lightly.transforms import SimCLRTransform

    dm = MultiViewDataModule(views=SimCLRTransform(input_size=32, gaussian_blur=0.0), batch_size=8,
                             num_workers=0, train_subset=16)
    assert dm.num_views == 2
    views, targets = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 and targets.dtype == torch.int64


def test_datamodule_with_workers():
    dm = MultiViewDataModule(views="two_views_cifar", batch_size=8, num_workers=1, train_subset=16)
    views, targets = next(iter(dm.train_dataloader()))
    assert len(views) == 2 and views[0].shape == (8, 3, 32, 32) and targets.dtype == torch.int64


def test_datamodule_cli_signature():
    """LightningCLI reads the constructor through jsonargparse: names, plain types, YAML round trip."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MultiViewDataModule, "data")
    cfg = parser.parse_args(["--data.views", "asymmetric_cifar", "--data.view_kwargs", '{"size": 24}',
                             "--data.dataset", "npz", "--data.data_dir", "/does/not/exist.npz"])
    dm = MultiViewDataModule(**cfg.data.as_dict())
    assert dm.view_transform(random_image())[0].shape == (3, 24, 24)
    assert "views: asymmetric_cifar" in parser.dump(cfg)


@pytest.mark.parametrize("size, recipe", [(32, "two_views_cifar"), (40, "two_views_cifar"), (128, "two_views")])
def test_views_auto_picks_the_32px_recipe_from_the_image_size_of_an_npz(tmp_path, size, recipe):
    """``views: auto`` on a dataset of unknown size (npz, image folder) reads the images' size: CIFAR-sized
    images get the ``_cifar`` recipe (32 px crops and evaluation), larger ones the 224 px recipe."""
    from types import SimpleNamespace

    x = smooth_images(6, size=size)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.arange(2))
    dm = MultiViewDataModule(dataset="npz", data_dir=str(tmp_path / "d.npz"), views="auto", batch_size=2)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(default_views="two_views"))
    dm.setup("fit")
    assert dm.views_name == recipe
    views, _ = dm.train_dataset[0]
    assert views[0].shape[-1] == (32 if recipe.endswith("_cifar") else 224)

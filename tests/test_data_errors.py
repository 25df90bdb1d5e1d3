"""Bad input on the data side tells the truth (issue #12): one class map for every split, high-bit-depth and
palette images read right on both paths, small images warned about, corrupt input named, batch sizes that
BatchNorm cannot train on refused, constructor arguments checked before any file is read.

Expected pixels are computed with numpy from the arrays the files were written from (16-bit PNGs are
written by a tiny encoder here, independent of Pillow, which cannot write 16-bit RGB).  CPU, offline.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvssl_lightning.data import MultiViewDataModule, NpzImageDataset, RawImages, build_dataset
from mvssl_lightning.data.device.decode import decode_to_batch, raw_collate

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of ``array`` (H, W) or (H, W, C), C in 1..4 (gray, gray+alpha, RGB, RGBA)."""
    a = np.asarray(array, dtype=np.uint16)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb8(h: int = 12, w: int = 12, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_folder(root: Path, files: dict[str, bytes]) -> None:
    """``files``: relative path -> file bytes."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def pngs(split: str, classes: str, n: int = 2, size: int = 12) -> dict[str, bytes]:
    return {f"{split}/{c}/{i}.png": encoded(rgb8(size, size, seed=i), "PNG") for c in classes for i in range(n)}


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def decoded_raw(item: torch.Tensor) -> np.ndarray:
    """A raw training item (file bytes or (3, H, W) uint8) as the device path decodes it, (H, W, 3)."""
    batch, sizes = decode_to_batch(RawImages([item]), torch.device("cpu"))
    h, w = sizes[0].tolist()
    return hwc(batch[0, :, :h, :w])


def both_paths(root: Path, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``root/train`` read by the CPU path (PIL) and the gpu_views path, as (H, W, 3)."""
    cpu, _ = build_dataset("imagefolder", root, "train")[index]
    raw, _ = build_dataset("imagefolder", root, "train", raw=True)[index]
    assert cpu.mode == "RGB"
    return np.asarray(cpu), decoded_raw(raw)


def no_warnings(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


# --------------------------------------------------------------------------- 1. one class map for every split
def test_imagefolder_splits_share_the_train_class_map_on_both_paths(tmp_path):
    write_folder(tmp_path, {**pngs("train", "abc"), **pngs("val", "ac")})  # val/ lacks class b
    expected = {"a": 0, "b": 1, "c": 2}  # train/'s folders, sorted
    for raw in (False, True):
        for split in ("train", "test"):
            ds = build_dataset("imagefolder", tmp_path, split, raw=raw)
            assert ds.classes == ["a", "b", "c"] and ds.class_to_idx == expected
            # every file's label is its folder's index in train/
            assert all(y == expected[Path(p).parent.name] for p, y in ds.samples)
        assert [ds[i][1] for i in range(len(ds))] == [0, 0, 2, 2]  # val: a, a, c, c
    for gpu_views in (False, True):
        dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                                 view_kwargs={"size": 8}, batch_size=3, eval_batch_size=4, num_workers=0,
                                 gpu_views=gpu_views)
        assert dm.num_classes == 3  # before setup: from the folder names
        dm.setup()
        assert dm.num_classes == 3
        _, val_targets = next(iter(dm.val_dataloader()[1]))
        assert val_targets.tolist() == [0, 0, 2, 2]
        train_targets = torch.cat([t for _, t in dm.train_dataloader()])
        assert sorted(train_targets.tolist()) == [0, 0, 1, 1, 2, 2]


def test_a_class_folder_missing_from_train_is_an_error_naming_it(tmp_path):
    write_folder(tmp_path, {**pngs("train", "ab"), **pngs("val", "ad")})
    pattern = r"class folder\(s\) .*val[/\\]d not in .*train.*labels come from the training split"
    with pytest.raises(ValueError, match=pattern):
        build_dataset("imagefolder", tmp_path, "test")
    with pytest.raises(ValueError, match=pattern):
        build_dataset("imagefolder", tmp_path, "test", raw=True)
    dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                             view_kwargs={"size": 8}, batch_size=2, num_workers=0)
    assert dm.num_classes == 2
    with pytest.raises(ValueError, match=pattern):
        dm.setup()


def test_npz_class_count_is_the_same_for_every_split(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 2, 3]), x_test=x[:2], y_test=np.array([0, 1]))
    train, test = (NpzImageDataset(tmp_path / "d.npz", s) for s in ("train", "test"))
    assert train.num_classes == test.num_classes == 4
    dm = MultiViewDataModule(dataset="npz", data_dir=str(tmp_path / "d.npz"), views="two_views_cifar",
                             batch_size=2, num_workers=0)
    assert dm.num_classes == 4
    dm.setup()
    assert dm.num_classes == 4
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.array([0, 1, 5, -1]), class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"bad\.npz: y_train holds labels -1\.\.5; labels must be -1 .* or 0\.\.1"):
        NpzImageDataset(tmp_path / "bad.npz", "train")


# --------------------------------------------------------------------------- 2. pixels of every mode
@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["gray16", "gray_alpha16", "rgb16", "rgba16"])
def test_16bit_pngs_are_read_as_their_high_byte_on_both_paths(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    high = (a >> 8).astype(np.uint8)  # value >> 8, computed here
    expected = np.repeat(high[..., :1], 3, axis=-1) if channels <= 2 else high[..., :3]
    data = png16(a[..., 0] if channels == 1 else a)
    write_folder(tmp_path, {"train/x/0.png": data, "val/x/0.png": data})
    cpu, device = both_paths(tmp_path)
    assert np.array_equal(cpu, expected)
    assert np.array_equal(device, expected)
    # the device decoder on the file's bytes (torchvision reads 16-bit PNGs as uint16)
    assert np.array_equal(decoded_raw(torch.frombuffer(bytearray(data), dtype=torch.uint8)), expected)
    # the same file inside an npz, both paths
    blob = np.frombuffer(data, np.uint8)
    np.savez(tmp_path / "d.npz", jpeg_train=blob, offsets_train=np.array([0, len(blob)]), y_train=np.array([0]))
    assert np.array_equal(np.asarray(NpzImageDataset(tmp_path / "d.npz", "train")[0][0]), expected)
    assert np.array_equal(decoded_raw(NpzImageDataset(tmp_path / "d.npz", "train", raw=True)[0][0]), expected)


def test_16bit_images_train_with_gpu_views(tmp_path):
    rng = np.random.default_rng(0)
    write_folder(tmp_path, {f"{s}/x/{i}.png": png16(rng.integers(0, 65536, (40, 40), dtype=np.uint16))
                            for s in ("train", "val") for i in range(4)})
    for decode in ("device", "workers"):
        dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                                 view_kwargs={"size": 24}, gpu_views=True, decode=decode, batch_size=4, num_workers=0)
        dm.setup()
        images, targets = next(iter(dm.train_dataloader()))
        views, _ = dm.on_after_batch_transfer((images, targets), 0)
        assert isinstance(views, list) and [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2


def test_32bit_integer_and_float_images(tmp_path):
    rng = np.random.default_rng(1)
    i32 = rng.integers(0, 65536, (6, 7)).astype(np.int32)  # Pillow mode "I": 16-bit data
    f32 = rng.random((6, 7)).astype(np.float32)  # Pillow mode "F": values in [0, 1]
    write_folder(tmp_path, {"train/i/0.tif": encoded(Image.fromarray(i32), "TIFF"),
                            "train/i/1.tif": encoded(Image.fromarray(f32), "TIFF"), **pngs("val", "i")})
    for index, gray in ((0, i32 >> 8), (1, np.rint(f32.astype(np.float64) * 255))):
        expected = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)
        cpu, device = both_paths(tmp_path, index)
        assert np.array_equal(cpu, expected) and np.array_equal(device, expected)

    bad = tmp_path / "bad"
    write_folder(bad, {"train/i/0.tif": encoded(Image.fromarray(np.array([[0, 70000]], np.int32)), "TIFF"),
                       "train/f/0.tif": encoded(Image.fromarray(np.array([[-0.5, 2.0]], np.float32)), "TIFF"),
                       **pngs("val", "f")})
    for raw in (False, True):
        ds = build_dataset("imagefolder", bad, "train", raw=raw)
        with pytest.raises(ValueError, match=r"image file .*f[/\\]0\.tif has mode 'F' .* values -0\.5\.\.2"):
            ds[0]
        with pytest.raises(ValueError, match=r"image file .*i[/\\]0\.tif has mode 'I' with values 0\.\.70000"):
            ds[1]


def test_palette_gray_alpha_and_cmyk_images_on_both_paths(tmp_path):
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 16, (6, 7), dtype=np.uint8)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    p = Image.frombytes("P", (7, 6), idx.tobytes())
    p.putpalette(palette.ravel().tolist())
    la = rng.integers(0, 256, (6, 7, 2), dtype=np.uint8)
    cmyk = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    write_folder(tmp_path, {"train/a/0.png": encoded(p, "PNG"), "train/a/1.png": encoded(Image.fromarray(la), "PNG"),
                            "train/a/2.tif": encoded(Image.frombytes("CMYK", (7, 6), cmyk.tobytes()), "TIFF"),
                            **pngs("val", "a")})
    expected = [palette[idx], np.repeat(la[..., :1], 3, axis=-1), (255 - c) * (255 - k) / 255]
    for index, want in enumerate(expected):
        cpu, device = both_paths(tmp_path, index)
        assert np.abs(cpu.astype(np.float64) - want).max() <= 0.5 + 1e-9  # exact up to rounding
        assert np.array_equal(device, cpu)
    # a CMYK JPEG: the device decoder (libjpeg-turbo) against the file's own CMYK planes
    jpeg = encoded(Image.frombytes("CMYK", (7, 6), cmyk.tobytes()), "JPEG", quality=95)
    planes = np.asarray(Image.open(io.BytesIO(jpeg))).astype(np.float64)
    want = (255 - planes[..., :3]) * (255 - planes[..., 3:]) / 255
    assert np.abs(decoded_raw(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)) - want).max() <= 1


# --------------------------------------------------------------------------- 3. small images
def test_images_much_smaller_than_the_crops_warn_once(tmp_path):
    write_folder(tmp_path, {**pngs("train", "ab", n=3, size=8), **pngs("val", "ab", size=8)})
    for gpu_views in (False, True):
        dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views", batch_size=2,
                                 num_workers=0, gpu_views=gpu_views)
        with pytest.warns(UserWarning, match=r"median shorter side 8 px over 6 sampled images of dataset "
                                             r"'imagefolder', largest crop 224 px in view recipe 'two_views'"):
            dm.setup()
        assert not [m for m in no_warnings(dm.setup) if "smaller" in m]  # once per data module
    dm = MultiViewDataModule(views="mveb_multicrop", batch_size=2, num_workers=0, train_subset=8)
    with pytest.warns(UserWarning, match=r"shorter side 32 px .* largest crop 224 px in view recipe 'mveb_multicrop'"):
        dm.setup()


def test_images_that_fit_the_crops_do_not_warn(tmp_path):
    write_folder(tmp_path, {**pngs("train", "ab", size=8), **pngs("val", "ab", size=8)})
    quiet = [
        MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                            view_kwargs={"size": 16}, batch_size=2, num_workers=0),  # 8 px is half of 16
        MultiViewDataModule(views="mveb_multicrop_cifar", batch_size=2, num_workers=0, train_subset=8),
        MultiViewDataModule(views="amdim_cifar", batch_size=2, num_workers=0, train_subset=8),  # no crop at all
    ]
    for dm in quiet:
        assert not [m for m in no_warnings(dm.setup) if "smaller" in m]


# --------------------------------------------------------------------------- 4. corrupt input names itself
def truncated_jpeg_folder(root: Path) -> Path:
    good = encoded(rgb8(32, 32), "JPEG", quality=95)
    write_folder(root, {"train/a/0.jpg": good, "train/a/1.jpg": good[: len(good) // 2], "val/a/0.jpg": good})
    return root / "train" / "a" / "1.jpg"


def test_a_truncated_jpeg_in_an_image_folder_is_named_on_the_cpu_path(tmp_path):
    bad = truncated_jpeg_folder(tmp_path)
    pattern = rf"corrupt image file {re.escape(str(bad))} \(OSError: image file is truncated"
    with pytest.raises(ValueError, match=pattern):
        build_dataset("imagefolder", tmp_path, "train")[1]
    dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                             view_kwargs={"size": 16}, batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=pattern):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("decode", ["device", "workers"])
def test_a_truncated_jpeg_in_an_image_folder_is_named_with_gpu_views(tmp_path, decode):
    bad = truncated_jpeg_folder(tmp_path)
    dm = MultiViewDataModule(dataset="imagefolder", data_dir=str(tmp_path), views="two_views",
                             view_kwargs={"size": 16}, batch_size=2, num_workers=0, gpu_views=True, decode=decode)
    with pytest.raises(ValueError, match=rf"corrupt image file {re.escape(str(bad))} \(.*truncated"):
        images, targets = next(iter(dm.train_dataloader()))
        dm.on_after_batch_transfer((images, targets), 0)


@pytest.mark.parametrize("decode", ["device", "workers"])
@pytest.mark.parametrize("keep_jpeg_header", [True, False])
def test_a_corrupt_npz_image_is_named_with_gpu_views(tmp_path, decode, keep_jpeg_header):
    blobs = [np.frombuffer(encoded(rgb8(16, 16, seed=i), "JPEG"), np.uint8).copy() for i in range(3)]
    blobs[1][2 if keep_jpeg_header else 0:] = 7  # image 1: garbage after (or including) the JPEG marker
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    path = tmp_path / "broken.npz"
    np.savez(path, jpeg_train=np.concatenate(blobs), offsets_train=offsets, y_train=np.zeros(3, np.int64),
             x_test=np.zeros((2, 16, 16, 3), np.uint8), y_test=np.zeros(2, np.int64))
    dm = MultiViewDataModule(dataset="npz", data_dir=str(path), views="two_views", view_kwargs={"size": 8},
                             batch_size=3, num_workers=0, gpu_views=True, decode=decode)
    with pytest.raises(ValueError, match=rf"corrupt image 1 in split 'train' of {re.escape(str(path))} \("):
        images, targets = next(iter(dm.train_dataloader()))
        dm.on_after_batch_transfer((images, targets), 0)


def test_collate_keeps_sources_for_the_decoder():
    good = torch.frombuffer(bytearray(encoded(rgb8(8, 8), "JPEG")), dtype=torch.uint8)
    bad = good.clone()[:40]
    images, targets = raw_collate([(good, 0, "image file /data/a.jpg"), (bad, 1, "image file /data/b.jpg")])
    assert isinstance(images, RawImages) and targets.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"corrupt image file /data/b\.jpg \("):
        decode_to_batch(images, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"corrupt image file /data/b\.jpg \("):  # decoded in the worker
        raw_collate([(good, 0, "image file /data/a.jpg"), (bad, 1, "image file /data/b.jpg")], decode_below=1e9)
    # decoded items: 16-bit samples become value >> 8; anything else is named
    wide = torch.tensor([0, 255, 256, 65535], dtype=torch.int32).reshape(1, 2, 2).repeat(3, 1, 1)
    stacked, _ = raw_collate([(wide.to(torch.uint16), 0, "image 0 of X")])
    assert stacked[0, 0].flatten().tolist() == [0, 0, 1, 255]
    with pytest.raises(ValueError, match=r"image 3 of X reached the gpu_views pipeline as \(3, 2, 2\) torch\.float32"):
        raw_collate([(wide.float(), 0, "image 3 of X")])


def test_a_file_that_is_not_an_npz_names_its_path(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(4, np.int64))
    cases = {
        "truncated.npz": (good.read_bytes()[:200], r"truncated\.npz is not a readable \.npz file \(BadZipFile"),
        "random.npz": (np.random.default_rng(0).bytes(300), r"random\.npz is not an \.npz file \(no zip header"),
        "array.npz": (None, r"array\.npz holds a single array \(\.npy\), not an \.npz archive"),
    }
    for name, (data, pattern) in cases.items():
        path = tmp_path / name
        if data is None:
            np.save(tmp_path / "array.npy", np.zeros(3))
            (tmp_path / "array.npy").rename(path)
        else:
            path.write_bytes(data)
        with pytest.raises(ValueError, match=pattern + r".*expected a NumPy \.npz archive"):
            NpzImageDataset(path, "train")
        dm = MultiViewDataModule(dataset="npz", data_dir=str(path), views="two_views_cifar", batch_size=2,
                                 num_workers=0)
        with pytest.raises(ValueError, match=pattern):
            _ = dm.num_classes
        with pytest.raises(ValueError, match=pattern):
            dm.setup()


def test_unreadable_npz_arrays_and_missing_keys_name_the_file(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.zeros((2, 8, 8, 3), np.uint8), y_train=np.zeros(2, np.int64),
             class_names=np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: cannot read array 'class_names' \(ValueError: Object arrays"):
        NpzImageDataset(path, "train")
    path = tmp_path / "keys.npz"
    np.savez(path, x_train=np.zeros((2, 8, 8, 3), np.uint8), y_train=np.zeros(2, np.int64))
    dm = MultiViewDataModule(dataset="npz", data_dir=str(path), views="two_views_cifar", batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=r"keys\.npz has no 'test' split .*'jpeg_test', 'offsets_test', 'y_test'.*"
                                         r"'x_test', 'y_test'"):
        dm.setup()


def test_missing_data_paths_are_named(tmp_path):
    for dataset, path, pattern in (("imagefolder", tmp_path / "nope", r"imagefolder directory not found: .*nope[/\\]train"),
                                   ("npz", tmp_path / "nope.npz", r"npz dataset file not found: .*nope\.npz"),
                                   ("npz", tmp_path, r"npz data_dir must be the \.npz file, got the directory")):
        dm = MultiViewDataModule(dataset=dataset, data_dir=str(path), batch_size=2, num_workers=0)
        with pytest.raises(FileNotFoundError, match=pattern):
            dm.setup()
    write_folder(tmp_path / "empty", {"train/a/notes.txt": b"", "val/a/0.png": encoded(rgb8(), "PNG")})
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) without image files: .*empty[/\\]train[/\\]a"):
        build_dataset("imagefolder", tmp_path / "empty", "train")


# --------------------------------------------------------------------------- 5. batches BatchNorm can train on
def test_batch_size_below_two_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 2 \(every method has BatchNorm"):
        MultiViewDataModule(batch_size=1)
    MultiViewDataModule(batch_size=2, eval_batch_size=1)  # evaluation runs in eval mode: one image is fine


def test_a_last_training_batch_of_one_sample_is_dropped_with_a_warning():
    dm = MultiViewDataModule(views="two_views_cifar", batch_size=4, drop_last=False, train_subset=9, num_workers=0)
    with pytest.warns(UserWarning, match=r"last training batch of each epoch would hold 1 sample \(9 samples per "
                                         r"process, batch_size=4\).*dropped"):
        loader = dm.train_dataloader()
    assert [len(t) for _, t in loader] == [4, 4]
    dm = MultiViewDataModule(views="two_views_cifar", batch_size=4, drop_last=False, train_subset=10, num_workers=0)
    assert [len(t) for _, t in dm.train_dataloader()] == [4, 4, 2]
    dm = MultiViewDataModule(views="two_views_cifar", batch_size=4, drop_last=True, train_subset=9, num_workers=0)
    assert [len(t) for _, t in dm.train_dataloader()] == [4, 4]
    dm = MultiViewDataModule(views="two_views_cifar", batch_size=2, drop_last=False, train_subset=1, num_workers=0)
    with pytest.raises(ValueError, match="the training set has 1 sample"):
        dm.train_dataloader()


# --------------------------------------------------------------------------- 6. constructor arguments
@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"dataset": "mnist"}, r"unknown dataset 'mnist'; valid names: default, cifar10, .*npz"),
    ({"dataset": "imagefolder", "data_dir": None}, r"dataset 'imagefolder' needs data_dir"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 2"),
    ({"eval_batch_size": 0}, r"eval_batch_size must be an integer >= 1, got 0"),
    ({"num_workers": -1}, r"num_workers must be an integer >= 0, got -1"),
    ({"train_subset": 0}, r"train_subset must be an integer >= 1, got 0"),
    ({"test_subset": -5}, r"test_subset must be an integer >= 1, got -5"),
    ({"decode": "gpu"}, r"decode must be one of \('auto', 'device', 'workers'\), got 'gpu'"),
])
def test_constructor_errors_name_the_argument_before_any_file_is_read(tmp_path, kwargs, pattern):
    missing = str(tmp_path / "not-there")  # were it read, the error would be a FileNotFoundError about it
    args = {"dataset": "imagefolder", "data_dir": missing, "views": "two_views_cifar", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        MultiViewDataModule(**args)
    MultiViewDataModule(dataset="imagefolder", data_dir=missing, views="two_views_cifar")  # valid: reads nothing


def test_the_cli_rejects_an_unknown_dataset_and_prints_configs_without_data(capsys):
    from jsonargparse import ArgumentError as JsonArgumentError
    from jsonargparse import ArgumentParser

    from mvssl_lightning.cli import run_cli

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiViewDataModule, "data")
    with pytest.raises(JsonArgumentError, match="mnist"):
        parser.parse_args(["--data.dataset", "mnist"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.dataset", "imagefolder",
                 "--data.data_dir", "/no/such/dir", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "dataset: imagefolder" in capsys.readouterr().out

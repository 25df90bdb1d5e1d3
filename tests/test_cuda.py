"""CUDA correctness: every method's bf16 step, compile + channels_last, device views, callbacks.

Run with ``pytest -m cuda`` (``python -m benchmarks.gpu_check`` runs it first). Every test here skips
without CUDA. The references are independent of the code under test:

* **methods** (every method of ``METHODS``, tiny heads, ResNet-18 with the CIFAR stem / AMDIM's small
  encoder, 32 px, batch 32): one step under ``torch.autocast(bfloat16)`` (what ``precision="bf16-mixed"``
  does) against the float32 step of a copy with the same weights on the same views and the same random draws, TF32 off.
  Tolerances: loss ``|bf16 - fp32| <= 2e-2 |fp32| + 1e-3``; gradients, flattened per part: cosine
  similarity ``> 0.98`` for the heads (projector, predictor, prototypes: where a precision error of an
  objective shows first) and ``> 0.90`` for the backbone (a bf16 backward through 18 layers at
  initialisation), norm ratio of all gradients within ``[0.9, 1.1]``. Calibrated with bf16 autocast on
  the CPU: loss within 1.4e-2 relative (MEC's loss is ~7e-3: the absolute term), heads 0.995-1.0,
  backbone 0.935 (InfoMin) to 1.0. Then one real ``Trainer`` step with ``precision="bf16-mixed"`` on the
  GPU (no warm-up): finite loss, every parameter finite, the backbone updated.
* **device views**: batched ``decode_jpeg`` on CUDA of mixed-size JPEGs against Pillow's decode (mean
  ``|diff|`` below 2 grey levels: nvJPEG and libjpeg-turbo round their IDCT and chroma upsampling
  differently; 99th percentile within 6), and the same batch padded like the CPU decode; every device
  step, every RandAugment op and every registered view recipe with the same generator state on CUDA and
  on the CPU (mean ``|diff|`` <= 1e-3 and at most 0.1 % of the values more than 2 grey levels apart:
  float rounding may flip a threshold or LUT decision for a pixel on a boundary).
* **callbacks**: a short ``Trainer(accelerator="gpu")`` fit with ``gpu_views``, ``OnlineLinearProbe`` and
  ``OnlineKNN`` (float32: the test checks the callbacks' arithmetic, not the backbone's precision; the bf16
  run is ``benchmarks.gpu_check``'s learning run); the probe's first SGD step and its validation accuracy,
  and the kNN accuracy, recomputed in float64 on the CPU from the features the step and validation returned
  (accuracies within one query in 128).
* **compile + channels_last** (last: a cold compile is the slowest test, and a time box then cuts only it):
  MVEB with ``channels_last=True, compile=True`` (backbone and EMA teacher compiled by ``configure_model``)
  against the eager, contiguous model with the same weights, float32 with TF32 off: loss to ``1e-4``
  relative, gradient cosine ``> 0.9999``.

``MVSSL_CUDA_TESTS_DEVICE=cpu`` runs the same tests on the CPU (bf16 autocast on the CPU, CPU against
CPU for the device comparisons): a dry run of this harness for machines without a GPU.
"""

from __future__ import annotations

import contextlib
import io
import math
import os

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.data import VIEW_RECIPES, MultiViewDataModule, get_view_recipe
from mvssl_lightning.data.datasets import NpzImageDataset, embedded_default_path
from mvssl_lightning.data.device.color import (
    DeviceColorJitter,
    DeviceGaussianBlur,
    DeviceGrayscale,
    DeviceNormalize,
    DeviceSolarize,
)
from mvssl_lightning.data.device.decode import RawImages, decode_to_batch
from mvssl_lightning.data.device.geometry import (
    DeviceFlip,
    DeviceResizedCrop,
    DeviceRotate90,
    DeviceTranslateReflect,
    crop_patches,
    resized_crops,
)
from mvssl_lightning.data.device.randaugment import DeviceRandAugment
from mvssl_lightning.data.device.recipe import compile_views
from mvssl_lightning.data.views.infomin import RAND_AUGMENT_OPS
from mvssl_lightning.methods import METHODS, ERSimCLR

DEVICE = torch.device(os.environ.get("MVSSL_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
]
ACCELERATOR = "gpu" if DEVICE.type == "cuda" else DEVICE.type

B = 32  # images per batch in the method tests
LOSS_RTOL, LOSS_ATOL = 2e-2, 1e-3  # bf16 vs fp32 loss
HEAD_GRAD_COS, BACKBONE_GRAD_COS = 0.98, 0.90  # bf16 vs fp32 gradient cosine similarity
GRAD_NORM_RATIO = (0.9, 1.1)


@contextlib.contextmanager
def strict_fp32():
    """float32 matmuls and convolutions without TF32 (the reference precision)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------- images
def _cifar(n: int, start: int = 0) -> list[Image.Image]:
    ds = NpzImageDataset(embedded_default_path(), "train")
    return [ds.load_image(i) for i in range(start, start + n)]


def _normalised(images: list[Image.Image], size: int) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(np.array(im.resize((size, size), Image.Resampling.BICUBIC))) for im in images])
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


def _method_views(n_global: int, n_local: int = 0, local_size: int = 16) -> list[torch.Tensor]:
    """Real CIFAR images (32 px globals, smaller locals), each view of the same ``B`` images."""
    images = _cifar(B)
    g = _normalised(images, 32)
    views = [g, g.flip(-1)] + [g.roll(k, dims=-1) for k in range(1, n_global - 1)]
    views += [F.interpolate(g[..., k:k + 24, k:k + 24], size=local_size, mode="area") for k in range(n_local)]
    return [v.to(DEVICE) for v in views]


# ---------------------------------------------------------------------------------------------- methods
# registry name (``METHODS``) -> (its tiny heads, view counts (globals, locals[, local size])); 32 px. A method
# added to ``METHODS`` without an entry fails its own tests (and test_every_registered_method_has_a_tiny_recipe)
TINY = {
    "mveb": (dict(proj_hidden_dim=128, proj_output_dim=64), (2, 2)),
    "mec": (dict(proj_hidden_dim=128, proj_output_dim=64, pred_hidden_dim=32), (2, 0)),
    "amdim": (dict(backbone="amdim", backbone_kwargs=dict(ndf=16, n_rkhs=64, depth=2)), (2, 0)),
    "infomin": (dict(proj_hidden_dim=128, proj_output_dim=64, queue_size=256, jigsaw=True), (2, 9, 8)),
    "er_simclr": (dict(proj_hidden_dim=128, proj_output_dim=64), (2, 0)),
    "er_byol": (dict(proj_hidden_dim=128, proj_output_dim=64, pred_hidden_dim=128), (2, 0)),
    "er_dino": (dict(head_hidden_dim=128, bottleneck_dim=32, output_dim=256), (2, 2)),
    "er_swav": (dict(proj_hidden_dim=128, proj_output_dim=64, n_prototypes=64), (2, 2)),
}
#: the backbone settings every method shares (AMDIM replaces the backbone with its small encoder)
COMMON = dict(backbone="resnet18", cifar_stem=True, batch_size=B)


def _build(name: str, n_views: int | None = None, **kwargs):
    """``(model on DEVICE, its views)``, the weights drawn from seed 0."""
    cls, (heads, counts) = METHODS[name], TINY[name]
    torch.manual_seed(0)
    model = cls(**{**COMMON, **heads, **kwargs}).to(DEVICE)
    return model, _method_views(*counts)[:n_views]


def _loss_and_grads(model, views, bf16: bool):
    """One step's loss and parameter gradients; the same random draws for every call (seeded)."""
    torch.manual_seed(123)  # AMDIM's 5x5 cells, InfoMin's jigsaw order and ShuffleBN permutation
    model.zero_grad(set_to_none=True)
    model.train()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        loss, terms, features = model.compute_loss([model._prepare(v) for v in views])
    loss.backward()
    grads = {n: p.grad.detach().double().flatten() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach().double(), terms, features, grads


def _cosine_and_norm_ratio(a: dict, b: dict, keys=None) -> tuple[float, float]:
    """Cosine similarity and norm ratio of the gradients ``a`` and ``b`` of ``keys`` (all), flattened."""
    assert a.keys() == b.keys()
    keys = sorted(a) if keys is None else sorted(keys)
    va, vb = torch.cat([a[k] for k in keys]), torch.cat([b[k] for k in keys])
    return float(F.cosine_similarity(va, vb, dim=0)), float(va.norm() / vb.norm())


@pytest.mark.parametrize("name", list(METHODS))
def test_bf16_step_agrees_with_fp32(name):
    model, views = _build(name)
    reference, _ = _build(name)  # the same seed: same weights and buffers (queue, centre); no deepcopy of
    # weight-normalised heads (ER-DINO's)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    loss16, terms16, features16, grads16 = _loss_and_grads(model, views, bf16=True)
    with strict_fp32():
        loss32, _, _, grads32 = _loss_and_grads(reference, views, bf16=False)
    assert torch.isfinite(loss16) and all(torch.isfinite(v).all() for v in terms16.values())
    assert features16.shape == (B, model.feat_dim) and features16.device.type == DEVICE.type
    assert abs(float(loss16 - loss32)) <= LOSS_RTOL * abs(float(loss32)) + LOSS_ATOL, (float(loss16), float(loss32))
    backbone = [k for k in grads32 if k.startswith("backbone.")]
    heads = [k for k in grads32 if not k.startswith("backbone.")]
    assert backbone and heads
    cos_backbone, _ = _cosine_and_norm_ratio(grads16, grads32, backbone)
    cos_heads, _ = _cosine_and_norm_ratio(grads16, grads32, heads)
    _, ratio = _cosine_and_norm_ratio(grads16, grads32)
    assert cos_heads > HEAD_GRAD_COS and cos_backbone > BACKBONE_GRAD_COS, (cos_heads, cos_backbone)
    assert GRAD_NORM_RATIO[0] <= ratio <= GRAD_NORM_RATIO[1], ratio


def test_every_registered_method_has_a_tiny_recipe():
    assert set(TINY) == set(METHODS), "add the new method's tiny heads and view counts to TINY"


class _ViewsDataset(torch.utils.data.Dataset):
    def __init__(self, views: list[torch.Tensor]) -> None:
        self.views = [v.cpu() for v in views]

    def __len__(self) -> int:
        return self.views[0].shape[0]

    def __getitem__(self, i):
        return [v[i] for v in self.views], i % 10


@pytest.mark.parametrize("name", list(METHODS))
def test_one_bf16_mixed_trainer_step_on_the_gpu(name, tmp_path):
    model, views = _build(name, warmup_steps=0)  # a warm-up from 0 would make the first step a no-op
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    loader = torch.utils.data.DataLoader(_ViewsDataset(views), batch_size=B, drop_last=True)
    trainer = L.Trainer(
        accelerator=ACCELERATOR, devices=1, precision="bf16-mixed", max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert next(model.parameters()).device.type == DEVICE.type
    changed = [not torch.equal(before[n], p.detach()) for n, p in model.backbone.named_parameters()]
    # the stem always has a gradient (the zero-initialised residual branches may not, at the first step)
    assert changed[0] and sum(changed) >= 10


# ---------------------------------------------------------------------------------------------- decoding
def _jpeg(img: Image.Image, subsampling: int) -> torch.Tensor:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, subsampling=subsampling)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


@pytest.mark.parametrize("subsampling", [0, 2], ids=["444", "420"])
def test_batched_jpeg_decode_on_the_device_matches_pillow(subsampling):
    sizes = [(48, 64), (81, 57), (33, 47), (128, 128), (60, 90), (17, 23)]  # (height, width), odd sizes too
    images = [im.resize((w, h), Image.Resampling.BICUBIC) for im, (h, w) in zip(_cifar(len(sizes), 100), sizes)]
    files = [_jpeg(im, subsampling) for im in images]
    png = io.BytesIO()
    images[0].save(png, format="PNG")
    files.append(torch.frombuffer(bytearray(png.getvalue()), dtype=torch.uint8))  # decoded on the CPU, then moved
    batch, got_sizes = decode_to_batch(RawImages(files), DEVICE)
    assert batch.device.type == DEVICE.type and batch.dtype == torch.uint8
    assert batch.shape == (len(files), 3, 128, 128)
    assert got_sizes.tolist() == [list(s) for s in sizes] + [list(sizes[0])]
    batch = batch.cpu()
    # the device decoder did the work (the pipeline falls back to the CPU decoder only after an error)
    direct = decode_jpeg(files[:-1], mode=ImageReadMode.RGB, device=DEVICE)
    for i, img in enumerate(direct):
        assert img.device.type == DEVICE.type
        assert torch.equal(img.cpu(), batch[i, :, :sizes[i][0], :sizes[i][1]])
    for i, data in enumerate(files):
        h, w = got_sizes[i].tolist()
        pil = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")))
        diff = (batch[i, :, :h, :w].permute(1, 2, 0).int() - pil.int()).abs().float()
        assert diff.mean() < 2.0 and diff.quantile(0.99) <= 6, (i, float(diff.mean()), float(diff.max()))
        # padding repeats the last row / column (as the CPU decode does)
        assert torch.equal(batch[i, :, :h, w:], batch[i, :, :h, w - 1:w].expand(-1, -1, 128 - w))
        assert torch.equal(batch[i, :, h:, :], batch[i, :, h - 1:h, :].expand(-1, 128 - h, -1))
    assert torch.equal(batch[-1, :, :48, :64].permute(1, 2, 0), torch.from_numpy(np.asarray(images[0])))  # PNG


# ---------------------------------------------------------------------------------------------- device ops
def _assert_close_images(dev: torch.Tensor, cpu: torch.Tensor, scale: float = 1.0) -> None:
    """``dev`` (any device) against ``cpu``: float rounding may flip a few boundary pixels only.

    ``scale``: the size of one unit of ``[0, 1]`` pixel values in these tensors (1 / std after
    normalisation).
    """
    assert dev.shape == cpu.shape and dev.dtype == cpu.dtype
    diff = (dev.cpu().float() - cpu.float()).abs() / scale
    assert torch.isfinite(diff).all()
    assert diff.mean() <= 1e-3 and (diff > 2 / 255).float().mean() <= 1e-3, (float(diff.mean()), float(diff.max()))


def _float_images(n: int = 16, size: int = 32) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(np.array(im)) for im in _cifar(n, 200)]).permute(0, 3, 1, 2)
    x = x.float().contiguous() / 255.0  # contiguous, as the pipeline's crops are
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1) if size != 32 else x


STEPS = {
    "color_jitter": lambda: DeviceColorJitter.from_strengths(0.4, 0.4, 0.2, 0.1, p=0.8),
    "color_jitter_strong": lambda: DeviceColorJitter.from_strengths(0.8, 0.8, 0.8, 0.2, p=1.0),
    "grayscale": lambda: DeviceGrayscale(0.5),
    "blur_radius": lambda: DeviceGaussianBlur(1.0),
    "blur_kernel": lambda: DeviceGaussianBlur(1.0, kernel_size=9),
    "solarize": lambda: DeviceSolarize(0.5),
    "normalize": lambda: DeviceNormalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "flip": lambda: DeviceFlip(0.5),
    "rotate90": lambda: DeviceRotate90(0.5),
    "translate_reflect": lambda: DeviceTranslateReflect(4, p=1.0),
    "randaugment": lambda: DeviceRandAugment(num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=1.0),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_device_step_on_the_device_matches_the_cpu(name):
    step = STEPS[name]()
    x = _float_images()
    cpu = step(x, torch.Generator().manual_seed(3))
    dev = step(x.to(DEVICE), torch.Generator().manual_seed(3))
    assert dev.device.type == DEVICE.type
    _assert_close_images(dev, cpu, scale=4.0 if name == "normalize" else 1.0)


@pytest.mark.parametrize("op", RAND_AUGMENT_OPS)
def test_each_randaugment_op_on_the_device_matches_the_cpu(op):
    step = DeviceRandAugment(num_ops=1, magnitude=9.0, magnitude_std=3.0, prob=1.0, ops=(op,))
    x = _float_images(size=40)
    cpu = step(x, torch.Generator().manual_seed(4))
    dev = step(x.to(DEVICE), torch.Generator().manual_seed(4))
    _assert_close_images(dev, cpu)


@pytest.mark.parametrize("bicubic", [False, True], ids=["bilinear", "bicubic"])
def test_resized_crops_and_jigsaw_patches_on_the_device_match_the_cpu(bicubic):
    src = (_float_images(size=48) * 255).round().to(torch.uint8)
    sizes = torch.tensor([[48, 48]] * src.shape[0])
    for size, scale in ((64, (0.05, 0.4)), (24, (0.2, 1.0))):  # enlarging and shrinking crops
        boxes = DeviceResizedCrop(size, scale, bicubic=bicubic).sample(sizes, torch.Generator().manual_seed(5))
        index = torch.arange(src.shape[0])
        cpu = resized_crops(src, boxes, index, size, bicubic=bicubic)
        dev = resized_crops(src.to(DEVICE), boxes, index, size, bicubic=bicubic)
        _assert_close_images(dev, cpu)
    cpu_patches = crop_patches(cpu, 3, 8, 6, torch.Generator().manual_seed(6))
    dev_patches = crop_patches(cpu.to(DEVICE), 3, 8, 6, torch.Generator().manual_seed(6))
    for d, c in zip(dev_patches, cpu_patches):
        assert torch.equal(d.cpu(), c)


def _recipe_source(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoded batch for ``name``: mixed sizes, or 32 px for the recipe without a crop (amdim_cifar)."""
    images = _cifar(12, 300)
    if name != "amdim_cifar":
        images = [im.resize((40 + 4 * (i % 3), 36 + 6 * (i % 2)), Image.Resampling.BICUBIC) for i, im in enumerate(images)]
    items = [torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous() for im in images]
    return decode_to_batch(RawImages(items), torch.device("cpu"))


@pytest.mark.parametrize("name", sorted(VIEW_RECIPES))
def test_every_view_recipe_on_the_device_matches_the_cpu(name):
    device_views = compile_views(get_view_recipe(name))
    src, sizes = _recipe_source(name)
    cpu = device_views(src, sizes, torch.Generator().manual_seed(7))
    dev = device_views(src.to(DEVICE), sizes, torch.Generator().manual_seed(7))
    assert len(dev) == len(cpu) == device_views.num_views
    for d, c in zip(dev, cpu):
        assert d.device.type == DEVICE.type
        _assert_close_images(d, c, scale=4.0)  # normalised views: one [0, 1] unit is about 4


# ---------------------------------------------------------------------------------------------- callbacks
class _Recorder(L.Callback):
    """The features and targets the probe and kNN see: training batch 0, then every validation batch."""

    def __init__(self) -> None:
        self.train: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.val: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((outputs["features"].double().cpu(), batch[1].cpu()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val[dataloader_idx].append((outputs["features"].double().cpu(), outputs["targets"].cpu()))


def _knn_top1(bank, bank_y, queries, query_y, k, t, classes):
    """Weighted kNN (Wu et al. 2018) in float64: votes ``exp(cos / t)`` of the ``k`` most similar."""
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    sim = queries @ bank.T
    top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
    scores = torch.zeros(queries.shape[0], classes, dtype=torch.float64)
    scores.scatter_add_(1, bank_y[idx], (top / t).exp())
    return (scores.argmax(dim=1) == query_y).double().mean().item()


def test_probe_and_knn_callbacks_run_on_the_gpu(tmp_path):
    torch.manual_seed(0)
    model = ERSimCLR(backbone="resnet18", cifar_stem=True, proj_hidden_dim=128, proj_output_dim=64,
                     optimizer="sgd", lr=0.05, lr_scaling="none", warmup_steps=0)
    data = MultiViewDataModule(views="two_views_cifar", gpu_views=True, batch_size=64, eval_batch_size=64,
                               num_workers=0, train_subset=128, test_subset=128)
    # SGD: its first step from the zero head has a closed form (below)
    probe = OnlineLinearProbe(num_classes=10, optimizer="sgd", lr=0.1, momentum=0.9)
    knn, recorder = OnlineKNN(k=20, temperature=0.1, num_classes=10), _Recorder()
    trainer = L.Trainer(
        accelerator=ACCELERATOR, devices=1, precision="32-true", max_steps=1, limit_train_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[probe, knn, recorder],
    )
    with strict_fp32():  # the probe's float32 arithmetic against the float64 references below
        trainer.fit(model, datamodule=data)
    assert data.device_stage is not None
    head = probe.head
    assert head is not None and head[-1].weight.device.type == DEVICE.type
    # the probe's first step from zero weights: W = -lr * dCE/dW at logits 0, on BN(f) (batch statistics)
    (f, y), = recorder.train
    bn = head[0]
    z = (f - f.mean(0)) / (f.var(0, unbiased=False) + bn.eps).sqrt()
    residual = torch.full((f.shape[0], 10), 0.1, dtype=torch.float64) - F.one_hot(y, 10).double()
    expected_w = -probe.lr * residual.T @ z / f.shape[0]
    expected_b = -probe.lr * residual.mean(0)
    torch.testing.assert_close(head[-1].weight.double().cpu(), expected_w, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(head[-1].bias.double().cpu(), expected_b, rtol=1e-3, atol=1e-6)
    # validation: the probe in eval mode (running statistics after one update), and kNN on the bank
    running_mean = 0.1 * f.mean(0)
    running_var = 0.9 + 0.1 * f.var(0, unbiased=True)
    qf = torch.cat([a for a, _ in recorder.val[1]])
    qy = torch.cat([b for _, b in recorder.val[1]])
    logits = ((qf - running_mean) / (running_var + bn.eps).sqrt()) @ expected_w.T + expected_b
    probe_top1 = (logits.argmax(1) == qy).double().mean().item()
    bank = torch.cat([a for a, _ in recorder.val[0]])
    bank_y = torch.cat([b for _, b in recorder.val[0]])
    knn_top1 = _knn_top1(bank, bank_y, qf, qy, k=20, t=0.1, classes=10)
    n = qy.numel()
    assert n == 128 and bank.shape[0] == 128
    metrics = trainer.callback_metrics
    assert math.isclose(float(metrics["probe/val_top1"]), probe_top1, abs_tol=1.5 / n)
    assert math.isclose(float(metrics["knn/top1"]), knn_top1, abs_tol=1.5 / n)


# ---------------------------------------------------------------------------------------------- compile
# last: the slowest test (a cold compile), so that a time box cuts only it
def test_compiled_channels_last_step_agrees_with_eager():
    eager, views = _build("mveb", n_views=2)  # two views: one input shape, one compiled graph per mode
    compiled, _ = _build("mveb", n_views=2, channels_last=True, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()  # what the Trainer calls: compiles the backbone and its EMA teacher in place
    assert getattr(compiled.backbone, "_compiled_call_impl", None) is not None
    assert getattr(compiled.teacher_backbone, "_compiled_call_impl", None) is not None
    assert compiled.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with strict_fp32():
        loss_e, _, features_e, grads_e = _loss_and_grads(eager, views, bf16=False)
        loss_c, _, features_c, grads_c = _loss_and_grads(compiled, views, bf16=False)
    assert abs(float(loss_c - loss_e)) <= 1e-4 * abs(float(loss_e)) + 1e-6, (float(loss_c), float(loss_e))
    torch.testing.assert_close(features_c, features_e, rtol=1e-3, atol=1e-4)
    cos, ratio = _cosine_and_norm_ratio(grads_c, grads_e)
    assert cos > 0.9999 and abs(ratio - 1) < 1e-3, (cos, ratio)

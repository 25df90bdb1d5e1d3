"""The chunked kNN search (issue 24, item 5; issue 27): exact against a float64 brute force whatever the chunk
size, a bank in pieces or in a lower precision, and bounded memory (``benchmarks/knn_memory.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mvssl_lightning.callbacks import OnlineKNN
from mvssl_lightning.core.knn import knn_classify, knn_topk
from mvssl_lightning.evaluation import KNNEval


def brute_force(queries, bank, labels, num_classes, k, t):
    """float64: every similarity, a full sort, the vote of the k nearest."""
    q = F.normalize(queries.double(), dim=1)
    b = F.normalize(bank.double(), dim=1)
    sim = q @ b.t()
    order = sim.argsort(dim=1, descending=True)[:, :k]
    values = sim.gather(1, order)
    scores = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
    for i in range(q.shape[0]):
        for v, j in zip(values[i], order[i]):
            scores[i, labels[j]] += torch.exp(v / t)
    return values, order, scores


def _problem(n=400, q=60, d=12, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    bank = centres[y] + 1.2 * torch.randn(n, d, generator=g)
    qy = torch.randint(0, c, (q,), generator=g)
    return bank, y, centres[qy] + 1.2 * torch.randn(q, d, generator=g), qy


@pytest.mark.parametrize("chunk", [1, 37, 12 * 50, 2**25], ids=["one-element", "odd", "50-rows", "whole"])
@pytest.mark.parametrize("pieces", [False, True], ids=["tensor", "pieces"])
def test_chunked_topk_is_the_exact_topk(chunk, pieces):
    bank, y, queries, _ = _problem()
    k = 25
    ref_v, ref_i, _ = brute_force(queries, bank, y, 7, k, 0.1)
    source = list(bank.split([1, 150, 0, 99, 150])) if pieces else bank
    before = bank.clone()
    values, index = knn_topk(queries, source, k, max_chunk_elements=chunk)
    assert torch.equal(bank, before)  # the caller's bank is read, never normalised in place
    assert torch.equal(index, ref_i)  # the same neighbours, in the same order
    torch.testing.assert_close(values.double(), ref_v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk", [40, 2**25])
def test_classify_ranks_the_classes_as_the_brute_force_vote(chunk):
    bank, y, queries, qy = _problem(seed=1)
    k, t = 30, 0.07
    _, _, scores = brute_force(queries, bank, y, 7, k, t)
    ranking = knn_classify(queries, bank, y, 7, k, t, max_chunk_elements=chunk)
    assert torch.equal(ranking[:, 0], scores.argmax(1))
    ranked = scores.gather(1, ranking)  # the reference scores in our order: non-increasing
    assert bool((ranked[:, :-1] >= ranked[:, 1:]).all())
    assert 0.3 < (ranking[:, 0] == qy).double().mean() < 1.0  # a non-trivial problem
    assert torch.equal(ranking, knn_classify(queries, list(bank.split(64)), y, 7, k, t, max_chunk_elements=chunk))


def test_classify_checks_its_input():
    bank, y, queries, _ = _problem(n=20, q=3)
    with pytest.raises(ValueError, match="bank_labels has 19 entries for a bank of 20 rows"):
        knn_classify(queries, bank, y[:19], 7)
    assert knn_classify(queries, bank, y, 7, k=500).shape == (3, 7)  # k capped at the bank size
    assert knn_classify(queries[:0], bank, y, 7).shape == (0, 7)


def _validate(knn, bank, bank_y, queries, query_y, batch=50):
    from tests.test_callbacks import FixedFeatures, make_trainer

    trainer = make_trainer(callbacks=[knn])
    loaders = [DataLoader(TensorDataset(bank, bank_y), batch_size=batch), DataLoader(TensorDataset(queries, query_y))]
    trainer.validate(FixedFeatures(bank.shape[1]), loaders, verbose=False)
    return trainer.callback_metrics["knn/top1"].item()


def test_a_bfloat16_bank_is_the_exact_knn_of_the_rounded_features(monkeypatch):
    bank, y, queries, qy = _problem(n=300, q=80, seed=2)
    y[::9] = -1  # unknown labels are not stored
    held = {}
    original = OnlineKNN.predict

    def spy(self, q, b, labels, num_classes):
        held["pieces"] = b
        return original(self, q, b, labels, num_classes)

    monkeypatch.setattr(OnlineKNN, "predict", spy)
    knn = OnlineKNN(k=20, temperature=0.1, num_classes=7, bank_dtype="bfloat16")
    top1 = _validate(knn, bank, y, queries, qy)
    assert isinstance(held["pieces"], list) and len(held["pieces"]) == 6  # the batches as they came: no copy
    assert all(p.dtype == torch.bfloat16 for p in held["pieces"])
    assert sum(p.shape[0] for p in held["pieces"]) == int((y >= 0).sum())
    labelled = y >= 0
    rounded = F.normalize(bank[labelled], dim=1).to(torch.bfloat16)
    _, _, scores = brute_force(queries, rounded, y[labelled], 7, 20, 0.1)
    assert top1 == pytest.approx((scores.argmax(1) == qy).double().mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="bank_dtype"):
        OnlineKNN(bank_dtype="int8")


def test_max_bank_size_keeps_the_first_labelled_rows_and_cuts_inside_a_batch():
    bank, y, queries, qy = _problem(n=200, q=50, seed=3)
    y[:10] = -1
    knn = OnlineKNN(k=15, temperature=0.1, num_classes=7, max_bank_size=73)
    top1 = _validate(knn, bank, y, queries, qy, batch=32)
    keep = torch.nonzero(y >= 0).flatten()[:73]
    _, _, scores = brute_force(queries, bank[keep], y[keep], 7, 15, 0.1)
    assert top1 == pytest.approx((scores.argmax(1) == qy).double().mean().item(), abs=1e-6)


def test_knn_eval_passes_the_memory_options_on():
    ev = KNNEval(None, num_classes=10, k=7, backbone="resnet18", cifar_stem=True, max_bank_size=1000,
                 bank_dtype="float16")
    assert (ev.knn.k, ev.knn.max_bank_size, ev.knn.bank_dtype) == (7, 1000, "float16")
    assert KNNEval(None, num_classes=10, backbone="resnet18").knn.bank_dtype == "float32"  # exact by default


def test_the_chunked_search_takes_a_fraction_of_the_earlier_peak_memory():
    # benchmarks/knn_memory.py at a small size, each case in a fresh process; peak RSS over the collected bank
    from benchmarks.knn_memory import measure

    # (chunks of 2**20 elements, 4 MiB in float32: the bound is a few of them whatever the bank's size)
    rows = {r["case"]: r for r in measure(["earlier", "chunked-float32"], bank=60_000, dim=512, queries=200,
                                          classes=100, k=50, batch=500, device="cpu", chunk_elements=2**20)}
    bank_gib = 60_000 * 512 * 4 / 2**30  # 117 MiB
    assert rows["earlier"]["peak_extra_gib"] > 2.5 * bank_gib  # concatenation, filter, normalise, transpose
    assert rows["chunked-float32"]["peak_extra_gib"] < 0.3 * bank_gib  # a few 4 MiB chunks, the running top-k
    assert rows["chunked-float32"]["same_top1_as_earlier"] == 1.0

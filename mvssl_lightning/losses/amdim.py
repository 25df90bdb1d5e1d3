"""AMDIM: multiscale global->local InfoNCE (Bachman, Hjelm, Buchwalter, NeurIPS 2019, arXiv 1906.00910).

Computes what the official code computes (``Philip-Bachman/amdim-public``, ``costs.py``:
``LossMultiNCE`` and ``NCE_MI_MULTI``).  For one source vector per image
``s_b in R^C`` and a target map ``t_{b', l}`` (``L = H x W`` locations), ``C = n_rkhs``:

    u[b, b', l]  = <s_b, t_{b', l}> / sqrt(C)                        raw scores
    reg          = 0.05 * mean_{b, b', l} u[b, b', l]^2                 before clipping
    u~           = c * tanh(u / c),   c = tclip = 20                    soft clip
    nce          = -mean_{b, l} log [ exp u~[b, b, l] /
                     ( exp u~[b, b, l] + sum_{b' != b} sum_{l'} exp u~[b, b', l'] ) ]

Each positive ``(b, l)`` is contrasted with **all** locations of all **other** images,
``(B - 1) L`` negatives shared by the ``L`` positives of anchor ``b``; the other locations of the
same image are neither positives of each other's softmax nor negatives.  The multiscale loss of two
views with features ``(r1, r5, r7)`` (maps ``1x1``, ``5x5``, ``7x7``) is

    L = L_1t5 + L_1t7 + L_5t5 + 1/2 * sum of the six reg terms,
    L_AtB = 1/2 * ( nce(A(x1) -> B(x2)) + nce(A(x2) -> B(x1)) )

with ``1t5``/``1t7``: the global ``r1`` predicts every location of the other view's ``r5``/``r7``,
and ``5t5``: one ``r5`` cell per image, drawn uniformly from the 25, predicts every ``r5`` location
of the other view.  The reg weight in the total is the code's (``lgt_reg = 0.5 * (six terms)``,
added as is in ``task_self_supervised.py``): a sum, not a mean, of the six.

Paper vs code: the paper (Sec. 3) writes the NCE bound with a generic critic and an expectation over
negatives; the code approximates it with the minibatch as above (confirmed by the maintainers in
issues #11, #12, #18), adds the squared-score penalty and the tanh clip, and uses only the three
tasks 1->5, 1->7 and 5->5 (the model lists ``5t7`` and ``7t7`` as tasks but never computes them).
One revision of ``costs.py`` (commit 0333f6b) weights the penalty 0.04; the later one (627eca3) 0.05,
which we follow.  The official ``LossMultiNCE`` defaults to ``tclip=10`` but ``train.py`` passes 20.

Numerics: everything runs in float32 with autocast disabled (float64 inputs stay float64); the
log-softmax uses ``logsumexp``.  The official code selects the 5x5 cell with uint8 masks, which
current torch rejects in ``masked_select``; we index the cell directly. The positives and the negatives'
log-sum-exp are taken with a diagonal view and a ``-inf`` fill rather than boolean masks (no host sync).

Distributed (``gather_distributed``, default True): the official code runs one process
(``nn.DataParallel``) and contrasts every anchor with the whole batch.  Under DDP we gather the
*target* maps of every process with gradients (:func:`gather_with_grad`); each local anchor is then
contrasted with all images of the global batch, and each process's loss is the mean over its
*local* anchors.  DDP averages the gradients over the ``W`` processes, which turns the local means
into the global mean, so the update equals the single-process update on the concatenated batch
(tested).  It assumes the same per-process batch size everywhere (``drop_last``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import gather_with_grad, world_size
from mvssl_lightning.losses.precision import at_least_float32

__all__ = ["AMDIMLoss", "amdim_loss", "amdim_nce", "amdim_terms", "sample_r5_cells", "tanh_clip"]

#: number of cells of the 5x5 map the 5->5 task draws its source from
R5_CELLS = 25


def tanh_clip(x: Tensor, clip: Optional[float] = 20.0) -> Tensor:
    """Soft clip ``c * tanh(x / c)`` to ``(-c, c)``; identity when ``clip`` is None."""
    return x if clip is None else clip * torch.tanh(x / clip)




def _rank_offset(local: int, total: int) -> int:
    """Index of this process's first row in a rank-ordered gather of ``total`` rows."""
    if total == local:
        return 0
    if total != local * world_size():
        raise ValueError(
            f"gathered {total} target rows from {world_size()} processes with {local} local rows: "
            "AMDIM's gathered NCE needs the same batch size on every process (use drop_last)"
        )
    return dist.get_rank() * local


def _nce(src: Tensor, trg_all: Tensor, offset: int, tclip: float, reg_weight: float) -> tuple[Tensor, Tensor]:
    """NCE and penalty of local anchors ``src (B, C)`` against ``trg_all (N, C, L)``.

    The positive of anchor ``b`` is target row ``offset + b``; every other row is a negative image.
    """
    b, c = src.shape
    n = trg_all.shape[0]
    if trg_all.shape[1] != c:
        raise ValueError(f"source has {c} channels but the target map has {trg_all.shape[1]}")
    if n < 2:
        raise ValueError("AMDIM's NCE needs at least 2 images (the negatives are the other images)")
    scores = torch.einsum("bc,ncl->bnl", src, trg_all) / math.sqrt(c)  # (B, N, L)
    reg = reg_weight * scores.pow(2).mean()
    scores = tanh_clip(scores, tclip)
    # no boolean-mask indexing (it waits for the device to count the mask): the positives are the diagonal of
    # the local block, the negatives all scores with the anchor's own image set to -inf (adds exp(-inf) = 0)
    pos = scores.narrow(1, offset, b).diagonal(dim1=0, dim2=1).T  # (B, L): anchor b, its own image
    own = torch.arange(n, device=src.device) == torch.arange(offset, offset + b, device=src.device)[:, None]
    neg = scores.masked_fill(own[:, :, None], -math.inf).flatten(1)  # (B, N L): other images' locations
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)  # shared by the L positives of anchor b
    log_softmax = pos - torch.logaddexp(pos, neg_lse)
    return -log_softmax.mean(), reg


def _targets(trg_map: Tensor, gather_distributed: bool) -> Tensor:
    """``(B, C, H, W)`` -> float ``(N, C, H W)``, gathered from every process when asked."""
    if trg_map.ndim != 4:
        raise ValueError(f"target map must be (B, C, H, W), got {tuple(trg_map.shape)}")
    trg = at_least_float32(trg_map).flatten(2)
    return gather_with_grad(trg) if gather_distributed else trg


def amdim_nce(
    src: Tensor,
    trg_map: Tensor,
    tclip: float = 20.0,
    reg_weight: float = 0.05,
    gather_distributed: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(nce, reg)`` of one global->local term (module docstring); official ``NCE_MI_MULTI._loss_g2l``.

    Args:
        src: ``(B, C)`` one source vector per image (``r1`` flattened, or one ``r5`` cell).
        trg_map: ``(B, C, H, W)`` target map of the other view; image ``b`` is ``src[b]``'s positive.
        tclip: soft-clip bound ``c`` of the scores (20, as ``train.py``).
        reg_weight: weight of ``mean(u^2)`` (0.05).
        gather_distributed: contrast against the target maps of all processes (module docstring).
    Returns:
        float32 (or float64) scalars ``nce`` (mean ``-log softmax`` over anchors and locations) and
        ``reg``.
    """
    if src.ndim != 2:
        raise ValueError(f"source must be (B, C), got {tuple(src.shape)}")
    with torch.autocast(device_type=src.device.type, enabled=False):
        trg_all = _targets(trg_map, gather_distributed)
        offset = _rank_offset(src.shape[0], trg_all.shape[0])
        return _nce(at_least_float32(src), trg_all, offset, tclip, reg_weight)


def sample_r5_cells(batch_size: int, device: Optional[torch.device] = None) -> Tensor:
    """``(B,)`` int64 cell indices, uniform over the 25 cells of a 5x5 map (row-major ``i * 5 + j``)."""
    return torch.randint(0, R5_CELLS, (batch_size,), device=device)


def _select_cells(r5: Tensor, loc: Optional[Tensor]) -> Tensor:
    """``r5 (B, C, 5, 5)`` -> ``(B, C)``: cell ``loc[b]`` (row-major) of image ``b``; random when None."""
    if r5.ndim != 4 or r5.shape[2:] != (5, 5):
        raise ValueError(f"r5 must be (B, C, 5, 5), got {tuple(r5.shape)}")
    b = r5.shape[0]
    if loc is None:
        loc = sample_r5_cells(b, r5.device)
    else:  # only user-given cells are checked (the check syncs with the device)
        loc = loc.to(device=r5.device, dtype=torch.long)
        if loc.shape != (b,) or bool(((loc < 0) | (loc >= R5_CELLS)).any()):
            raise ValueError(f"r5 cell indices must be (B,) = ({b},) in [0, 25), got {tuple(loc.shape)}")
    return r5.flatten(2)[torch.arange(b, device=r5.device), :, loc]


def amdim_terms(
    feats1: Sequence[Tensor],
    feats2: Sequence[Tensor],
    tclip: float = 20.0,
    reg_weight: float = 0.05,
    r5_loc1: Optional[Tensor] = None,
    r5_loc2: Optional[Tensor] = None,
    gather_distributed: bool = True,
) -> dict[str, Tensor]:
    """The three symmetrised NCE terms and the summed penalty: ``nce_1t5``, ``nce_1t7``, ``nce_5t5``, ``reg``.

    ``feats = (r1, r5, r7)`` of one view: ``(B, C, 1, 1)`` (or ``(B, C)``), ``(B, C, 5, 5)``,
    ``(B, C, 7, 7)``.  ``r5_loc1``/``r5_loc2``: ``(B,)`` cells of view 1/2 that source the 5->5 task
    (random when None).  ``reg`` is ``1/2 * sum`` of the six penalties, as the official code.
    """
    if len(feats1) != 3 or len(feats2) != 3:
        raise ValueError("feats1 and feats2 must each be (r1, r5, r7)")
    r1_1, r5_1, r7_1 = feats1
    r1_2, r5_2, r7_2 = feats2
    with torch.autocast(device_type=r1_1.device.type, enabled=False):
        src1_1, src1_2 = at_least_float32(r1_1).flatten(1), at_least_float32(r1_2).flatten(1)
        src5_1, src5_2 = _select_cells(at_least_float32(r5_1), r5_loc1), _select_cells(at_least_float32(r5_2), r5_loc2)
        # each target map is gathered once and serves every task that predicts it
        t5_1, t7_1 = _targets(r5_1, gather_distributed), _targets(r7_1, gather_distributed)
        t5_2, t7_2 = _targets(r5_2, gather_distributed), _targets(r7_2, gather_distributed)
        offset = _rank_offset(src1_1.shape[0], t5_1.shape[0])
        pairs = {
            "1t5": ((src1_1, t5_2), (src1_2, t5_1)),
            "1t7": ((src1_1, t7_2), (src1_2, t7_1)),
            "5t5": ((src5_1, t5_2), (src5_2, t5_1)),
        }
        terms: dict[str, Tensor] = {}
        reg: Tensor | float = 0.0
        for name, directions in pairs.items():
            (nce_a, reg_a), (nce_b, reg_b) = (_nce(s, t, offset, tclip, reg_weight) for s, t in directions)
            terms[f"nce_{name}"] = 0.5 * (nce_a + nce_b)
            reg = reg + reg_a + reg_b
        terms["reg"] = cast(Tensor, 0.5 * reg)
    return terms


def amdim_loss(
    feats1: Sequence[Tensor],
    feats2: Sequence[Tensor],
    tclip: float = 20.0,
    reg_weight: float = 0.05,
    r5_loc1: Optional[Tensor] = None,
    r5_loc2: Optional[Tensor] = None,
    gather_distributed: bool = True,
) -> Tensor:
    """``L_1t5 + L_1t7 + L_5t5 + 1/2 * sum(six reg terms)``: AMDIM's total (module docstring).

    Arguments as :func:`amdim_terms`.
    """
    terms = amdim_terms(feats1, feats2, tclip, reg_weight, r5_loc1, r5_loc2, gather_distributed)
    return terms["nce_1t5"] + terms["nce_1t7"] + terms["nce_5t5"] + terms["reg"]


class AMDIMLoss(nn.Module):
    """Module wrapper of :func:`amdim_loss`; ``forward(feats1, feats2)`` returns ``(loss, terms)``.

    ``terms``: detached ``nce_1t5``, ``nce_1t7``, ``nce_5t5`` and ``reg`` (the summed penalty).
    """

    def __init__(self, tclip: float = 20.0, reg_weight: float = 0.05, gather_distributed: bool = True) -> None:
        super().__init__()
        self.tclip = tclip
        self.reg_weight = reg_weight
        self.gather_distributed = gather_distributed

    def forward(
        self,
        feats1: Sequence[Tensor],
        feats2: Sequence[Tensor],
        r5_loc1: Optional[Tensor] = None,
        r5_loc2: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = amdim_terms(
            feats1, feats2, self.tclip, self.reg_weight, r5_loc1, r5_loc2, self.gather_distributed
        )
        loss = terms["nce_1t5"] + terms["nce_1t7"] + terms["nce_5t5"] + terms["reg"]
        return loss, {k: v.detach() for k, v in terms.items()}

    def extra_repr(self) -> str:
        return f"tclip={self.tclip}, reg_weight={self.reg_weight}, gather_distributed={self.gather_distributed}"

"""Aligned-MTL: Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions


def alignment_matrix(gram: Tensor, input_eps: float) -> Tensor:
    """``B: [T, T]`` of Aligned-MTL for a float64 Gramian ``K = G G^T``: ``B G`` has all singular values equal.

    With ``K = V diag(lambda) V^T`` restricted to the eigenvalues above the authors' rank tolerance
    ``lambda_max * T * input_eps`` (``input_eps`` the machine epsilon of the dtype the Gramian was
    formed in), ``B = sqrt(lambda_min) V diag(lambda)^-1/2 V^T``: the rows of ``B G`` are the task
    gradients aligned to an orthogonal system whose singular values all equal the smallest non-zero
    singular value of ``G``. The rank is a mask, not a slice, so nothing waits for the device; a zero
    Gramian gives the identity (the authors' rank-0 case).
    """
    num = gram.shape[0]
    gram = gram / gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)  # [T, T], mean diagonal 1
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # [T], [T, T]
    kept = eigenvalues > eigenvalues.amax() * num * input_eps  # [T]
    smallest = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, torch.inf)).amin()
    smallest = torch.where(kept.any(), smallest, torch.ones_like(smallest))
    inv_roots = torch.where(kept, eigenvalues.clamp_min(torch.finfo(gram.dtype).tiny).rsqrt(), torch.zeros_like(eigenvalues))  # [T]
    aligned = smallest.sqrt() * (eigenvectors * inv_roots) @ eigenvectors.T  # [T, T]
    return torch.where(kept.any(), aligned, torch.eye(num, dtype=gram.dtype, device=gram.device))


class AlignedMTL(Balancer):
    """Aligned-MTL (Senushkin et al., CVPR 2023), Algorithm 1 with the smallest-singular-value scale.

    The task gradients ``G`` are replaced by the closest system (in the Procrustes sense) whose
    singular values are all equal, the condition number 1: ``G = U Sigma V^T`` becomes
    ``sigma_min U V^T`` on the gradients' span, computed from the eigendecomposition of the Gramian
    (``B G`` with ``B`` from :func:`alignment_matrix`, ``torch.linalg.eigh`` in float64 on the
    device). The direction is the aligned gradients' mean: weights ``B 1 / T``. For orthogonal
    gradients of equal norm ``B = I`` and the direction is the mean gradient.

    Scale: the paper sums the aligned gradients (task weights ``w = 1``); with ``w = 1/T`` (TorchJD's
    default) the direction is on the mean-gradient scale, ``T`` times smaller than the paper's.

    Variant: the paper's Algorithm 1 on the gradients of the shared parameters, rescaled by the
    smallest non-zero singular value (the scale of its analysis; TorchJD's default ``"min"``; the
    authors' code also offers the median and the root-mean-square). The paper's Aligned-MTL-UB
    aligns the gradients of a shared representation instead, a cheaper upper-bound variant (as
    MGDA-UB); the balanced step here forms the gradients of the shared parameters for every
    balancer, so the UB variant has nothing to run on. No options.

    Eigenvalues below ``lambda_max * T * eps`` (``eps`` of the Gramian's dtype: the authors'
    tolerance) count as zero; the rank is a mask, with no host synchronisation in this code, but
    ``torch.linalg.eigh`` itself checks its solver's status on the host, one synchronisation per call
    on CUDA (no PyTorch eigensolver avoids it). Agrees with TorchJD's ``AlignedMTL`` (same
    tolerance, ``scale_mode="min"``) to rounding.
    """

    def __init__(self, num_tasks: int, options: BalancerOptions = BalancerOptions()) -> None:
        super().__init__(num_tasks, options)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        aligned = alignment_matrix(gram.detach().to(torch.float64), torch.finfo(gram.dtype).eps)  # [T, T]
        return aligned.mean(dim=1).to(gram.dtype)

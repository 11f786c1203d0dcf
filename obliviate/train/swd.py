"""Sliced-Wasserstein distance between two weight matrices: SNAP's regulariser.

Choi et al. 2024, *SNAP: Unlearning Selective Knowledge in Large Language Models with Negative
Instructions*; the same regulariser is in their Opt-Out code (`brightjade/Opt-Out`, model.py).

The rows of a weight matrix W (n, d) are treated as n samples of a distribution on R^d. Projected
onto a unit direction θ, two such samples of equal size are matched in sorted order (the 1-D optimal
transport plan), so with K random directions θ_k ~ N(0, I_d) / ‖·‖:

    SWD(W₀, W) = (1/K) Σ_k Σ_i (sort(W₀ θ_k)_i − sort(W θ_k)_i)²

p = 2 with no root, summed over the n rows and averaged over the K directions, as in the reference
code. A 1-D parameter (bias, norm weight) of size d is one sample: a 1 × d matrix. Fresh directions
are drawn on every call (from torch's global RNG unless a generator is given), so the penalty is an
unbiased Monte-Carlo estimate whose randomness is covered by the loop's seed and checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def random_directions(
    dim: int, n_projections: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """K unit directions in R^dim as the columns of a (dim, K) float32 matrix.

    Drawn on `device` (the generator's device when one is given), so no host-to-device copy per call.
    """
    if generator is not None:
        device = generator.device
    theta = torch.randn(dim, n_projections, generator=generator, device=device)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_wasserstein(
    w0: torch.Tensor,
    w: torch.Tensor,
    directions: torch.Tensor | None = None,
    n_projections: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SWD(w0, w) (scalar, float32); differentiable in `w`. `directions` (d, K) fixes the projections."""
    if w.dim() == 1:  # a vector is one sample: 1 × d
        w0, w = w0.unsqueeze(0), w.unsqueeze(0)
    if w0.shape != w.shape or w.dim() != 2:
        raise ValueError(f"sliced_wasserstein needs equal 1-D or 2-D shapes, got {tuple(w0.shape)}, {tuple(w.shape)}")
    if directions is None:
        directions = random_directions(w.shape[1], n_projections, generator, w.device)
    directions = directions.to(device=w.device, dtype=torch.float32)
    proj0 = torch.sort(w0.detach().float() @ directions, dim=0).values  # (n, K)
    proj = torch.sort(w.float() @ directions, dim=0).values  # (n, K)
    return (proj0 - proj).pow(2).sum(dim=0).mean()


def swd_penalty(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_projections: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Σ over (initial, current) parameter pairs of SWD(initial, current), fresh directions per pair."""
    total = torch.zeros(())
    for init, param in pairs:
        total = total.to(param.device) + sliced_wasserstein(init, param, None, n_projections, generator)
    return total

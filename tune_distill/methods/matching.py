"""Matching objectives: distances between real and synthetic gradients, and distribution matching.

Gradient distances compare two lists of per-parameter gradients:
- ``sum_of_squares``: sum over layers of the summed squared differences (the paper's best);
- ``mse``: sum over layers of the *mean* squared difference (scale-free across layer sizes);
- ``cosine``: 1 - cosine similarity of the two gradients flattened into one vector each;
- ``layerwise_cosine``: DC's distance: per layer and output channel 1 - cosine, summed, with
  one-dimensional parameters (biases, norm scales) ignored as DC does.

Distribution matching (DM) compares mean embeddings of real and synthetic clouds: a network's
pooled global feature, or (``quantile_embedding``, after SADM) each channel's distribution over
the cloud's points summarised by evenly spaced order statistics.

``OBJECTIVES`` names them for the config's ``matching`` key: each entry builds, from the
distillation's settings, an ``Objective`` (network, real input and labels, synthetic input and
labels -> one class's loss). A new objective is a function of that shape plus one
``register_objective`` line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from ..sparse import SparseTensor

if TYPE_CHECKING:
    from .loop import DistillSettings

Input = torch.Tensor | SparseTensor
# One class's matching loss: (network, real input, real labels, synthetic input, synthetic labels) -> scalar.
Objective = Callable[[torch.nn.Module, Input, torch.Tensor, Input, torch.Tensor], torch.Tensor]

DISTANCES = ("sum_of_squares", "layerwise_cosine", "mse", "cosine")


def _rows(g: torch.Tensor) -> torch.Tensor:
    """A weight gradient as (output channels, rest).

    Sparse kernels are (K, C_in, C_out), with the output channel last; every other weight
    (Conv, Linear) has it first.
    """
    if g.ndim == 3:
        return g.permute(2, 0, 1).reshape(g.shape[2], -1)
    return g.reshape(g.shape[0], -1)


def _layerwise_cosine(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    if real.ndim == 1:
        return syn.new_zeros(())
    r, s = _rows(real), _rows(syn)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def gradient_distance(real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """Distance between real and synthetic gradients (same parameters, same order)."""
    if kind == "sum_of_squares":
        return sum(((s - r) ** 2).sum() for r, s in zip(real, syn))
    if kind == "mse":
        return sum(((s - r) ** 2).mean() for r, s in zip(real, syn))
    if kind == "layerwise_cosine":
        return sum(_layerwise_cosine(r, s) for r, s in zip(real, syn))
    if kind == "cosine":
        r = torch.cat([g.flatten() for g in real])
        s = torch.cat([g.flatten() for g in syn])
        return 1 - (r * s).sum() / (r.norm() * s.norm() + 1e-6)
    raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")


def gradient_match(
    net: torch.nn.Module,
    real_input: torch.Tensor | SparseTensor,
    real_labels: torch.Tensor,
    syn_input: torch.Tensor | SparseTensor,
    syn_labels: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """One class's gradient-matching loss: distance between the network's weight gradients.

    The real gradients are constants; the synthetic ones keep their graph (``create_graph``) so
    the distance can be differentiated with respect to the synthetic points.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    loss_fn = torch.nn.functional.cross_entropy
    g_real = torch.autograd.grad(loss_fn(net(real_input), real_labels), params)
    g_real = [g.detach() for g in g_real]
    g_syn = torch.autograd.grad(loss_fn(net(syn_input), syn_labels), params, create_graph=True, allow_unused=True)
    pairs = [(r, s) for r, s in zip(g_real, g_syn) if s is not None and s.requires_grad]
    if not pairs:
        raise RuntimeError("no synthetic gradient depends on the synthetic points")
    return gradient_distance([r for r, _ in pairs], [s for _, s in pairs], kind)


def distribution_match(
    embed: Callable[..., torch.Tensor],
    real_input: torch.Tensor | SparseTensor,
    syn_input: torch.Tensor | SparseTensor,
    var_weight: float = 0.0,
) -> torch.Tensor:
    """DM's loss for one class: squared distance between mean embeddings.

    With ``var_weight`` > 0, plus that times the squared distance between the per-dimension
    variances: means alone are met by clouds that all sit near the class's centre, and the
    variances ask the synthetic clouds to spread as the real ones do (needs 2+ clouds per class).
    """
    with torch.no_grad():
        real = embed(real_input)
    syn = embed(syn_input)
    loss = ((real.mean(0) - syn.mean(0)) ** 2).sum()
    if var_weight and len(syn) > 1:
        loss = loss + var_weight * ((real.var(0) - syn.var(0)) ** 2).sum()
    return loss


def quantile_embedding(features: torch.Tensor, quantiles: int) -> torch.Tensor:
    """Per cloud, each channel's values over its points at ``quantiles`` evenly spaced ranks, from
    the minimum to the maximum: (B, P, C) -> (B, quantiles * C).

    Max pooling keeps one order statistic per channel; these keep its whole shape (as SADM's
    per-channel sorted features do), at any number of points per cloud, so real clouds and
    smaller synthetic ones compare rank for rank.
    """
    b, p, c = features.shape
    ranks = torch.linspace(0, p - 1, quantiles, device=features.device).round().long()
    return features.sort(dim=1).values[:, ranks].reshape(b, quantiles * c)


def gradient(settings: "DistillSettings") -> Objective:
    """Gradient matching (DC, the paper): the ``distance`` between real and synthetic weight gradients."""
    def loss(net: torch.nn.Module, real: Input, y_real: torch.Tensor, syn: Input, y_syn: torch.Tensor) -> torch.Tensor:
        return gradient_match(net, real, y_real, syn, y_syn, settings.distance)

    return loss


def distribution(settings: "DistillSettings") -> Objective:
    """Distribution matching of the network's pooled embedding (``dm_embedding=pooled``) or of
    each channel's quantiles over the points (``quantiles``), plus ``ce_weight`` times the
    synthetic clouds' cross-entropy."""
    def loss(net: torch.nn.Module, real: Input, y_real: torch.Tensor, syn: Input, y_syn: torch.Tensor) -> torch.Tensor:
        if settings.dm_embedding == "quantiles":
            def embed(x: torch.Tensor) -> torch.Tensor:
                return quantile_embedding(net.point_features(x), settings.dm_quantiles)
        else:
            embed = net.embed
        out = distribution_match(embed, real, syn, settings.dm_var_weight)
        if settings.ce_weight:
            # Means alone let a synthetic cloud sit between classes as long as the class average
            # is right; a pretrained network's cross-entropy pulls each cloud toward its own
            # class (IDM's class-aware regulariser).
            out = out + settings.ce_weight * F.cross_entropy(net(syn), y_syn)
        return out

    return loss


OBJECTIVES: dict[str, Callable[["DistillSettings"], Objective]] = {}


def register_objective(name: str, build: Callable[["DistillSettings"], Objective]) -> None:
    """Make ``build`` the config's ``matching=name`` (a name already taken is an error)."""
    if name in OBJECTIVES:
        raise ValueError(f"matching objective {name!r} is registered already")
    OBJECTIVES[name] = build


register_objective("gradient", gradient)
register_objective("distribution", distribution)

"""Anchor clouds and learned blends of them: a set that trains on more clouds than it stores.

3DDP's parameterisation (docs/protocol-3d-sources.md): each stored cloud of the ipc is kept as
``cloud_split`` anchor clouds, and ``morphs`` more training clouds per ipc cloud are blends of
those anchors, point by point: point ``i`` of a blend is ``sum_a w_a * anchor_a[i]`` with weights
``w = softmax(logits)`` over the anchors, one row of ``cloud_split`` logits per blend. The set's
storage is its anchors' coordinates plus those logits; the classifiers that judge it train on the
anchors and the blends.

Blending point by point needs the anchors' points to correspond: ``aligned`` reorders each
anchor's points to follow the first anchor of its ipc cloud (shapes of a class share a frame in
ModelNet, so the nearest free point is a fair partner). Reordering leaves each anchor the same
set of points, which a permutation-invariant network cannot tell apart.
"""

from __future__ import annotations

import torch


def greedy_match(reference: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
    """A permutation ``perm`` of ``cloud``'s (P, D) points such that ``cloud[perm][i]`` is a near
    partner of ``reference[i]``: pairs taken from the closest up, each point used once. Greedy
    rather than optimal, so that it costs a sort of P^2 distances (no assignment solver needed)."""
    n = len(reference)
    order = torch.cdist(reference, cloud).flatten().argsort(stable=True).tolist()
    perm = [-1] * n
    used = [False] * n
    left = n
    for flat in order:
        i, j = divmod(flat, n)
        if perm[i] < 0 and not used[j]:
            perm[i], used[j] = j, True
            left -= 1
            if not left:
                break
    return torch.tensor(perm, dtype=torch.long)


def aligned(points: torch.Tensor, anchors: int) -> torch.Tensor:
    """``points`` (N, P, D), N a multiple of ``anchors``, with every group of ``anchors``
    consecutive clouds (an ipc cloud's anchors) reordered to follow its group's first cloud."""
    out = points.clone()
    for start in range(0, len(points), anchors):
        for k in range(start + 1, start + anchors):
            out[k] = points[k][greedy_match(points[start], points[k])]
    return out


def blends(points: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The blended clouds (M, P, D) of anchors ``points`` (G * A, P, D) under ``logits`` (M, A),
    M a multiple of the G groups: rows ``g * M / G`` on blend group ``g``'s A anchors."""
    groups, anchors = len(points) // logits.shape[1], logits.shape[1]
    per_group = len(logits) // groups
    weights = torch.softmax(logits, dim=1).view(groups, per_group, anchors)
    return torch.einsum("gma,gapd->gmpd", weights, points.view(groups, anchors, *points.shape[1:])).flatten(0, 1)


def expanded(points: torch.Tensor, labels: torch.Tensor,
             logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The clouds a stored set trains on: its anchors ``points`` (G * A, P, D) with ``labels``,
    then every blend, labelled with its group's class (see ``blends``); without ``logits`` (a set
    with no blends), the clouds as given."""
    if logits is None:
        return points, labels
    anchors = logits.shape[1]
    if len(points) % anchors or len(logits) % (len(points) // anchors):
        raise ValueError(f"{len(points)} anchor clouds in groups of {anchors} do not fit {len(logits)} blends")
    groups = len(points) // anchors
    blend_labels = labels[::anchors].repeat_interleave(len(logits) // groups)
    return torch.cat([points, blends(points, logits)]), torch.cat([labels, blend_labels])

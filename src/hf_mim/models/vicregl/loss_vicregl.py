"""VICRegL's objective (the paper's section 3, the original's main_vicregl.py): the global VICReg loss on the
expanded representations and the local loss on the expanded feature maps, with feature-space and location-space nearest-neighbour matching.

Distributed semantics (those of the original): the invariance terms use the local batch; the variance and covariance
terms use the batch gathered from every rank **with gradient** and centred. Under DDP (which averages gradients over
ranks) N processes then compute exactly the gradient one process computes on the global batch: each rank's variance
term is the same function of the gathered batch, the gather's backward sums the ranks' gradients, DDP divides by N.

Precision: every loss below runs in float32 under mixed precision (`runs_in_float32`: autocast off, half-precision
inputs up-cast). The covariance is a matmul that `--bf16` autocast would run in bfloat16, whose 8-bit mantissa leaves
the squared off-diagonal sum and the per-dimension standard deviations with errors of a few 1e-3.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...losses import runs_in_float32

VARIANCE_EPS = 1e-4  # inside the square root of the per-dimension variance


@dataclass(frozen=True)
class VicregCoefficients:
    invariance: float = 25.0
    variance: float = 25.0
    covariance: float = 1.0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: every rank's gradient for every slice is summed (all_reduce of the stacked
    gradients) and each rank keeps its own slice.

    Why not `torch.distributed.nn.functional.all_gather`: on gloo its backward (an all_to_all emulation of
    reduce-scatter) returned wrong gradients for VICRegL's local loss (measured: 2-process DDP drifted 6e-3 from one
    process in 3 float64 steps, where this gives 1e-17); it is also deprecated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather over ranks along dim 0 (every rank holds an equal-size slice), gradients flowing back to each
    rank's slice summed over ranks; the tensor itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    return _GatherWithGrad.apply(x.contiguous())


def gather_center(x: torch.Tensor) -> torch.Tensor:
    x = gather_with_grad(x)
    return x - x.mean(dim=0)


def _variance_term(centered: torch.Tensor) -> torch.Tensor:
    """mean over dimensions of ReLU(1 - std), std over the batch (dim 0, unbiased) with eps inside the root."""
    std = torch.sqrt(centered.var(dim=0) + VARIANCE_EPS)
    return F.relu(1.0 - std).mean()


def _off_diagonal_sq_sum(cov: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of (..., C, C) covariances -> (...). The off-diagonal entries are
    taken as a view (row-major, the order of the original's mask), not as total minus diagonal, which would lose
    precision to cancellation."""
    n = cov.shape[-1]
    off = cov.flatten(-2)[..., :-1].unflatten(-1, (n - 1, n + 1))[..., 1:]
    return off.pow(2).sum(dim=(-2, -1))


@runs_in_float32
def vicreg_global_loss(
    embeddings: list[torch.Tensor], coefficients: VicregCoefficients, num_global_views: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) of the global branch, coefficients applied.

    invariance: mean over ordered pairs (i < num_global_views, j != i) of MSE(e_i, e_j); variance and covariance:
    means over all views of the gathered, centred embeddings (covariance / (N - 1), squared off-diagonal sum / D)."""
    pairs = [(i, j) for i in range(min(num_global_views, len(embeddings))) for j in range(len(embeddings)) if j != i]
    if not pairs:
        raise ValueError(f"The global loss needs at least 2 views, got {len(embeddings)}.")
    invariance = sum(F.mse_loss(embeddings[i], embeddings[j]) for i, j in pairs)
    variance = covariance = 0.0
    for embedding in embeddings:
        x = gather_center(embedding)
        variance = variance + _variance_term(x)
        cov = (x.T @ x) / (x.shape[0] - 1)
        covariance = covariance + _off_diagonal_sq_sum(cov) / x.shape[1]
    views = len(embeddings)
    return (
        coefficients.invariance * invariance / len(pairs),
        coefficients.variance * variance / views,
        coefficients.covariance * covariance / views,
    )


@torch.no_grad()
def nearest_neighbour_matches(distances: torch.Tensor, num_matches: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """From (B, N_in, N_cand) distances: each input position's nearest candidate; keep the `num_matches` input
    positions whose nearest-neighbour distance is smallest (all of them for None), in ascending position order.

    Returns (input_positions, candidate_positions), both (B, k) int64. Ties are broken as the original breaks them
    (`topk(1, largest=False)` for the neighbour, `torch.sort` for the ranking), so the same distances select the same
    positions. `num_matches` larger than N_in keeps every position (the original would fail to reshape)."""
    num_inputs = distances.shape[1]
    keep = num_inputs if num_matches is None or num_matches < 0 else min(num_matches, num_inputs)
    nn_distance, nn_index = distances.topk(k=1, dim=-1, largest=False)
    nn_distance, nn_index = nn_distance.squeeze(-1), nn_index.squeeze(-1)
    order = torch.sort(nn_distance, dim=1).indices
    # the `keep` best-ranked positions, put back in ascending order by a second sort: boolean indexing of the ranks
    # would give the same positions but wait for the device, and a data-dependent shape under torch.compile
    positions = order[:, :keep].sort(dim=1).values
    return positions, torch.gather(nn_index, 1, positions)


def _gather_positions(maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return torch.gather(maps, 1, positions[..., None].expand(-1, -1, maps.shape[-1]))


@runs_in_float32
def matched_vicreg_loss(
    x: torch.Tensor, y: torch.Tensor, coefficients: VicregCoefficients
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg between matched features x, y (B, M, C): invariance MSE on the local batch; variance per (match, channel)
    and covariance per match index over the gathered batch, halves of x and y, averaged over matches."""
    invariance = coefficients.invariance * F.mse_loss(x, y)
    x, y = gather_center(x), gather_center(y)
    variance = coefficients.variance * (_variance_term(x) / 2 + _variance_term(y) / 2)
    x, y = x.transpose(0, 1), y.transpose(0, 1)  # (M, B, C)
    samples, channels = x.shape[1], x.shape[2]
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    cov_x = torch.einsum("mbc,mbd->mcd", x, x) / (samples - 1)
    cov_y = torch.einsum("mbc,mbd->mcd", y, y) / (samples - 1)
    per_match = _off_diagonal_sq_sum(cov_x) / channels / 2 + _off_diagonal_sq_sum(cov_y) / channels / 2
    return invariance, variance, coefficients.covariance * per_match.mean()


@runs_in_float32
def local_pair_loss(
    maps_i: torch.Tensor,
    maps_j: torch.Tensor,
    locations_i: torch.Tensor,
    locations_j: torch.Tensor,
    coefficients: VicregCoefficients,
    num_matches: tuple[int, int],
    l2_all_matches: bool = True,
    fast_vc_reg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The local loss of one ordered view pair: maps (B, N, C), locations (B, N, 2). Feature-space matching (all
    positions, or `num_matches`) and location matching (`num_matches[0]` of i, `num_matches[1]` of j), each in
    both directions with halves; the two matchings are summed. `fast_vc_reg`: the matched pairs give only the
    invariance (variance and covariance returned as 0.0; `vicregl_local_loss` takes them from the whole maps)."""
    l2_matches = (None, None) if l2_all_matches else num_matches
    totals = [0.0, 0.0, 0.0]
    # Order of the original: feature matching (i -> j, j -> i), then location matching; each direction computes its own
    # distances (cdist(a, b) and cdist(b, a) may round differently), each matching adds (direction 1 + direction 2) / 2.
    for (key_i, key_j), matches in (((maps_i, maps_j), l2_matches), ((locations_i, locations_j), num_matches)):
        directions = []
        for source, target, key_source, key_target, k in (
            (maps_i, maps_j, key_i, key_j, matches[0]),
            (maps_j, maps_i, key_j, key_i, matches[1]),
        ):
            with torch.no_grad():
                distances = torch.cdist(key_source.detach(), key_target.detach())
            source_positions, target_positions = nearest_neighbour_matches(distances, k)
            matched_source = _gather_positions(source, source_positions)
            matched_target = _gather_positions(target, target_positions)
            if fast_vc_reg:
                invariance = coefficients.invariance * F.mse_loss(matched_source, matched_target)
                directions.append((invariance, 0.0, 0.0))
            else:
                directions.append(matched_vicreg_loss(matched_source, matched_target, coefficients))
        for index in range(3):
            totals[index] = totals[index] + (directions[0][index] / 2 + directions[1][index] / 2)
    return tuple(totals)


@runs_in_float32
def map_variance_covariance(
    maps: list[torch.Tensor], coefficients: VicregCoefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fast_vc_reg`'s (variance, covariance), coefficients applied: the regularisers on each view's whole map
    (B, N_v, C) instead of on every matched pair. Per view: the gathered map centred over the batch; variance: mean
    over (position, channel) of ReLU(1 - std over the batch); covariance: for every position the squared off-diagonal
    sum of its (C, C) batch covariance / (B - 1), divided by C, averaged over positions. Both averaged over views.

    The original (`local_loss` under `--fast-vc-reg 1`) writes `cov_loss = <per-position term>` and then
    `cov_loss = cov_loss + cov_loss.mean()` inside the view loop: the accumulator is overwritten by a (N,) tensor,
    so only the last view counts and the loss is not a scalar (its `loss.backward()` fails unless N = 1). This is the
    evident intent, the sum over views of each view's mean over positions (as its variance and its global loss)."""
    variance = covariance = 0.0
    for view_maps in maps:
        x = gather_center(view_maps)  # (B, N, C)
        variance = variance + _variance_term(x)
        x = x.transpose(0, 1)  # (N, B, C)
        samples, channels = x.shape[1], x.shape[2]
        x = x - x.mean(dim=1, keepdim=True)
        cov = torch.einsum("nbc,nbd->ncd", x, x) / (samples - 1)
        covariance = covariance + (_off_diagonal_sq_sum(cov) / channels).mean()
    return coefficients.variance * variance / len(maps), coefficients.covariance * covariance / len(maps)


@runs_in_float32
def vicregl_local_loss(
    maps: list[torch.Tensor],
    locations: list[torch.Tensor],
    coefficients: VicregCoefficients,
    num_matches: tuple[int, int] = (20, 4),
    l2_all_matches: bool = True,
    num_global_views: int = 2,
    fast_vc_reg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) of the local branch: `local_pair_loss` averaged over the ordered pairs
    (i < num_global_views, j != i). maps[v]: (B, N_v, C); locations[v]: (B, N_v, 2) in image pixels.

    `fast_vc_reg` (the original's `--fast-vc-reg 1`): the invariance as above, variance and covariance once per view
    on its whole map (`map_variance_covariance`) instead of on each of the pairs' four matched sets."""
    if len(maps) != len(locations):
        raise ValueError(f"{len(maps)} maps but {len(locations)} location grids.")
    pairs = [(i, j) for i in range(min(num_global_views, len(maps))) for j in range(len(maps)) if j != i]
    if not pairs:
        raise ValueError(f"The local loss needs at least 2 views, got {len(maps)}.")
    totals = [0.0, 0.0, 0.0]
    for i, j in pairs:
        if maps[i].shape[1] != locations[i].shape[1] or maps[j].shape[1] != locations[j].shape[1]:
            raise ValueError(
                f"views {i}/{j}: {maps[i].shape[1]}/{maps[j].shape[1]} map positions but "
                f"{locations[i].shape[1]}/{locations[j].shape[1]} grid locations; the grid must match the feature map."
            )
        parts = local_pair_loss(
            maps[i], maps[j], locations[i], locations[j], coefficients, num_matches, l2_all_matches, fast_vc_reg
        )
        totals = [t + p for t, p in zip(totals, parts)]
    if fast_vc_reg:
        return (totals[0] / len(pairs), *map_variance_covariance(maps, coefficients))
    return tuple(t / len(pairs) for t in totals)


__all__ = [
    "VicregCoefficients",
    "gather_center",
    "gather_with_grad",
    "local_pair_loss",
    "map_variance_covariance",
    "matched_vicreg_loss",
    "nearest_neighbour_matches",
    "vicreg_global_loss",
    "vicregl_local_loss",
]

"""VICRegL's objective (`hf_mim.models.vicregl.loss_vicregl`, `VicreglForPreTraining`) against an independent,
deliberately plain transcription of the reference definition (shared/reference/vicregl.md §3.2; facebookresearch/VICRegL
`main_vicregl.py`: `global_loss`, `local_loss`, `_local_loss`, `_vicreg_loss`, `neirest_neighbores`).

The transcription below imports nothing from hf_mim: python-level loops over the batch, the view pairs and the
positions, a python nearest-neighbour search, explicit off-diagonal masks, float64 throughout. Exact ties in the
location distances are broken here by (distance, position); the original breaks them with `torch.topk` /
`torch.sort`, so where ties cross the kept/dropped boundary the tests only check that hf_mim's choice is a valid one.
"""

import math

import pytest
import torch

from hf_mim import VicreglConfig, VicreglForPreTraining
from hf_mim.models.vicregl.loss_vicregl import (
    VicregCoefficients,
    local_pair_loss,
    map_variance_covariance,
    matched_vicreg_loss,
    nearest_neighbour_matches,
    vicreg_global_loss,
    vicregl_local_loss,
)

DTYPE = torch.float64
REL = 1e-10
ABS = 1e-13
# Not the defaults (25, 25, 1), so that a swapped or missing coefficient shows.
COEFFS = VicregCoefficients(invariance=2.0, variance=3.0, covariance=0.5)


# ====================================================================================== the reference, transcribed
REF_VARIANCE_EPS = 1e-4  # inside the square root


def ref_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    xs, ys = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(xs, ys)) / len(xs)


def ref_centre(rows: list[list[float]]) -> list[list[float]]:
    """Subtract the batch mean (rows: one list of D values per sample)."""
    size, dim = len(rows), len(rows[0])
    mean = [sum(row[d] for row in rows) / size for d in range(dim)]
    return [[row[d] - mean[d] for d in range(dim)] for row in rows]


def ref_variance_term(rows: list[list[float]]) -> float:
    """mean_d ReLU(1 - sqrt(unbiased Var_batch + 1e-4))."""
    centred = ref_centre(rows)
    size, dim = len(rows), len(rows[0])
    total = 0.0
    for d in range(dim):
        variance = sum(row[d] ** 2 for row in centred) / (size - 1)
        total += max(0.0, 1.0 - math.sqrt(variance + REF_VARIANCE_EPS))
    return total / dim


def ref_covariance_term(rows: list[list[float]]) -> float:
    """sum of the squared off-diagonal entries of C = sum_b c_b c_b^T / (N - 1), divided by D."""
    centred = torch.tensor(ref_centre(rows), dtype=DTYPE)
    size, dim = centred.shape
    cov = torch.zeros(dim, dim, dtype=DTYPE)
    for b in range(size):
        cov += torch.outer(centred[b], centred[b])
    cov /= size - 1
    off_diagonal = ~torch.eye(dim, dtype=torch.bool)
    return cov[off_diagonal].pow(2).sum().item() / dim


def ref_pairs(num_views: int, num_global: int = 2) -> list[tuple[int, int]]:
    return [(i, j) for i in range(num_global) for j in range(num_views) if j != i]


def ref_global_loss(embeddings: list[torch.Tensor], coeffs: VicregCoefficients) -> tuple[float, float, float]:
    pairs = ref_pairs(len(embeddings))
    invariance = sum(ref_mse(embeddings[i], embeddings[j]) for i, j in pairs) / len(pairs)
    variance = sum(ref_variance_term(e.tolist()) for e in embeddings) / len(embeddings)
    covariance = sum(ref_covariance_term(e.tolist()) for e in embeddings) / len(embeddings)
    return coeffs.invariance * invariance, coeffs.variance * variance, coeffs.covariance * covariance


def ref_distance(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def ref_matches(keys_in: list[list[float]], keys_cand: list[list[float]], num_matches: int | None):
    """One sample: nearest candidate of every input position (first minimum); keep the `num_matches` (None: all;
    more than there are: all) positions with the smallest nearest-neighbour distance; return them (and their
    neighbours) in ascending position order."""
    nearest = []
    for p, u in enumerate(keys_in):
        best_q, best_d = -1, math.inf
        for q, v in enumerate(keys_cand):
            d = ref_distance(u, v)
            if d < best_d:
                best_q, best_d = q, d
        nearest.append((best_d, p, best_q))
    keep = len(keys_in) if num_matches is None else min(num_matches, len(keys_in))
    kept = sorted(sorted(nearest)[:keep], key=lambda item: item[1])
    return [p for _, p, _ in kept], [q for _, _, q in kept]


def ref_matched_loss(xs, ys, coeffs: VicregCoefficients) -> tuple[float, float, float]:
    """xs[b][m], ys[b][m]: matched feature vectors (lists of C floats). Invariance: MSE; variance / covariance per
    match index m over the batch, halves of x and y, averaged over m."""
    size, matches = len(xs), len(xs[0])
    flat_x = [v for b in range(size) for m in range(matches) for v in xs[b][m]]
    flat_y = [v for b in range(size) for m in range(matches) for v in ys[b][m]]
    invariance = sum((a - c) ** 2 for a, c in zip(flat_x, flat_y)) / len(flat_x)
    variance = covariance = 0.0
    for m in range(matches):
        column_x = [xs[b][m] for b in range(size)]
        column_y = [ys[b][m] for b in range(size)]
        variance += ref_variance_term(column_x) / 2 + ref_variance_term(column_y) / 2
        covariance += ref_covariance_term(column_x) / 2 + ref_covariance_term(column_y) / 2
    return (
        coeffs.invariance * invariance,
        coeffs.variance * variance / matches,
        coeffs.covariance * covariance / matches,
    )


def ref_matching(maps_i, maps_j, keys_i, keys_j, coeffs, matches, select=ref_matches):
    """One matching (keys: features or locations), i -> j keeping matches[0] and j -> i keeping matches[1], halves."""
    total = [0.0, 0.0, 0.0]
    for source, target, key_s, key_t, k in (
        (maps_i, maps_j, keys_i, keys_j, matches[0]),
        (maps_j, maps_i, keys_j, keys_i, matches[1]),
    ):
        xs, ys = [], []
        for b in range(maps_i.shape[0]):
            positions, neighbours = select(key_s[b].tolist(), key_t[b].tolist(), k)
            xs.append([source[b, p].tolist() for p in positions])
            ys.append([target[b, q].tolist() for q in neighbours])
        part = ref_matched_loss(xs, ys, coeffs)
        total = [t + v / 2 for t, v in zip(total, part)]
    return total


def ref_local_pair(maps_i, maps_j, loc_i, loc_j, coeffs, num_matches, l2_all_matches, select_location=ref_matches):
    """`_local_loss`: feature-space matching (all positions, or num_matches) plus location matching."""
    l2_matches = (None, None) if l2_all_matches else num_matches
    feature = ref_matching(maps_i, maps_j, maps_i, maps_j, coeffs, l2_matches)
    location = ref_matching(maps_i, maps_j, loc_i, loc_j, coeffs, num_matches, select_location)
    return tuple(a + b for a, b in zip(feature, location))


def ref_local_loss(maps, locations, coeffs, num_matches=(20, 4), l2_all_matches=True):
    pairs = ref_pairs(len(maps))
    total = [0.0, 0.0, 0.0]
    for i, j in pairs:
        parts = ref_local_pair(maps[i], maps[j], locations[i], locations[j], coeffs, num_matches, l2_all_matches)
        total = [t + p for t, p in zip(total, parts)]
    return tuple(t / len(pairs) for t in total)


# ====================================================================================== helpers
def assert_parts(actual, expected, rel=REL, names=("invariance", "variance", "covariance")):
    for name, a, e in zip(names, actual, expected, strict=True):
        a = float(a)
        assert math.isclose(a, e, rel_tol=rel, abs_tol=ABS), f"{name}: hf_mim {a!r} vs reference {e!r}"


def box_grid(top: float, left: float, height: float, width: float, n: int) -> list[list[float]]:
    """Cell centres (row, col) of an n x n grid over a crop box, row-major (as the original's location grid)."""
    return [[top + (k + 0.5) * height / n, left + (c + 0.5) * width / n] for k in range(n) for c in range(n)]


def random_grids(gen: torch.Generator, batch: int, n: int, image: float = 224.0) -> torch.Tensor:
    """(batch, n*n, 2) cell centres of random crop boxes in an image."""
    grids = []
    for _ in range(batch):
        u = torch.rand(4, generator=gen, dtype=DTYPE).tolist()
        height, width = 40 + u[0] * 160, 40 + u[1] * 160
        grids.append(box_grid(u[2] * (image - height), u[3] * (image - width), height, width, n))
    return torch.tensor(grids, dtype=DTYPE)


def random_maps(gen: torch.Generator, batch: int, positions: int, channels: int) -> torch.Tensor:
    # scale < 1 so that the variance hinge is active for most dimensions
    return 0.7 * torch.randn(batch, positions, channels, generator=gen, dtype=DTYPE)


# ====================================================================================== global loss
@pytest.mark.parametrize("num_views", [2, 5])
@pytest.mark.parametrize("coeffs", [COEFFS, VicregCoefficients()], ids=["custom", "default"])
def test_global_loss_matches_reference(num_views, coeffs):
    gen = torch.Generator().manual_seed(num_views)
    embeddings = [0.8 * torch.randn(6, 10, generator=gen, dtype=DTYPE) for _ in range(num_views)]
    assert_parts(vicreg_global_loss(embeddings, coeffs), ref_global_loss(embeddings, coeffs))
    # 5 views: ordered pairs (i in {0,1}, j != i) -> 8; check the pair count through the invariance alone
    assert len(ref_pairs(num_views)) == (2 if num_views == 2 else 8)


# ====================================================================================== nearest-neighbour selection
@pytest.mark.parametrize("num_matches", [1, 3, 7, 20, None, -1])
def test_nearest_neighbour_matches_properties(num_matches):
    gen = torch.Generator().manual_seed(11)
    batch, n_in, n_cand = 3, 7, 5
    distances = torch.rand(batch, n_in, n_cand, generator=gen, dtype=DTYPE)
    positions, neighbours = nearest_neighbour_matches(distances, num_matches)
    keep = n_in if num_matches is None or num_matches < 0 or num_matches > n_in else num_matches
    assert positions.shape == neighbours.shape == (batch, keep)
    assert positions.dtype == neighbours.dtype == torch.int64
    for b in range(batch):
        rows = distances[b].tolist()
        nn_dist = [min(row) for row in rows]
        kept = positions[b].tolist()
        assert kept == sorted(kept) and len(set(kept)) == keep  # ascending spatial order, no repeats
        for p, q in zip(kept, neighbours[b].tolist()):
            assert rows[p][q] == nn_dist[p]  # paired with its nearest candidate
        dropped = [p for p in range(n_in) if p not in kept]
        if dropped:
            assert max(nn_dist[p] for p in kept) < min(nn_dist[p] for p in dropped)  # the k smallest
        # the transcription selects the same positions and neighbours
        ref_positions = sorted(sorted(range(n_in), key=lambda p: (nn_dist[p], p))[:keep])
        assert kept == ref_positions
        assert neighbours[b].tolist() == [rows[p].index(nn_dist[p]) for p in ref_positions]


def _check_valid_selection(distances: torch.Tensor, positions: torch.Tensor, neighbours: torch.Tensor, keep: int):
    """hf_mim's choice under exact ties: kept positions ascending; each paired with *a* nearest candidate; every
    position strictly closer than the k-th smallest NN distance kept, none strictly farther kept."""
    for b in range(distances.shape[0]):
        rows = distances[b].tolist()
        nn_dist = [min(row) for row in rows]
        kept = positions[b].tolist()
        assert len(kept) == keep and kept == sorted(kept) and len(set(kept)) == keep
        for p, q in zip(kept, neighbours[b].tolist()):
            assert rows[p][q] == nn_dist[p]
        threshold = sorted(nn_dist)[keep - 1]
        assert all(nn_dist[p] <= threshold for p in kept)
        assert all(p in kept for p in range(len(rows)) if nn_dist[p] < threshold)


def test_nearest_neighbour_matches_under_exact_location_ties():
    """Identical boxes (every NN distance 0: the kept set is a free choice) and half-cell shifted boxes (each
    position equidistant to two candidates: the neighbour is a free choice). Coordinates are exact in binary."""
    same = torch.tensor([box_grid(16, 32, 96, 96, 3), box_grid(0, 0, 48, 48, 3)], dtype=DTYPE)
    shifted = torch.tensor([box_grid(16, 32 + 16, 96, 96, 3), box_grid(0, 8, 48, 48, 3)], dtype=DTYPE)
    for other in (same, shifted):
        distances = torch.cdist(same, other)
        for k in (1, 4, 5, 9):
            positions, neighbours = nearest_neighbour_matches(distances, k)
            _check_valid_selection(distances, positions, neighbours, k)
    # The shifted case really has NN ties (two candidates at the same smallest distance) for the middle column.
    d = torch.cdist(same, shifted)[0, 1].tolist()
    assert sorted(d)[0] == sorted(d)[1] == 16.0


# ====================================================================================== local loss
@pytest.mark.parametrize("num_matches", [(5, 2), (20, 4)])
@pytest.mark.parametrize("l2_all_matches", [True, False])
def test_local_loss_two_views_3x3(num_matches, l2_all_matches):
    gen = torch.Generator().manual_seed(21)
    batch, channels = 5, 6
    maps = [random_maps(gen, batch, 9, channels) for _ in range(2)]
    locations = [random_grids(gen, batch, 3) for _ in range(2)]
    actual = vicregl_local_loss(maps, locations, COEFFS, num_matches, l2_all_matches)
    expected = ref_local_loss(maps, locations, COEFFS, num_matches, l2_all_matches)
    assert_parts(actual, expected)
    # one ordered pair directly, too
    pair = local_pair_loss(maps[1], maps[0], locations[1], locations[0], COEFFS, num_matches, l2_all_matches)
    assert_parts(
        pair, ref_local_pair(maps[1], maps[0], locations[1], locations[0], COEFFS, num_matches, l2_all_matches)
    )


@pytest.mark.parametrize("num_matches", [(5, 2), (20, 4)])
@pytest.mark.parametrize("l2_all_matches", [True, False])
def test_local_loss_two_large_three_small(num_matches, l2_all_matches):
    """2 large views (3x3 = 9 positions) + 3 small ones (2x2 = 4): 8 ordered pairs; (20, 4) keeps all 9 of a large
    view (hf_mim documents that more matches than positions keep every position; the original would fail) and all 4
    of a small one."""
    gen = torch.Generator().manual_seed(22)
    batch, channels = 4, 5
    sizes = [3, 3, 2, 2, 2]
    maps = [random_maps(gen, batch, n * n, channels) for n in sizes]
    locations = [random_grids(gen, batch, n) for n in sizes]
    actual = vicregl_local_loss(maps, locations, COEFFS, num_matches, l2_all_matches)
    expected = ref_local_loss(maps, locations, COEFFS, num_matches, l2_all_matches)
    assert_parts(actual, expected)


def test_local_loss_identical_boxes_all_kept():
    """Views 0 and 1 share their boxes (every location NN distance 0: exact ties), but with every position kept
    ((20, 20) clamped to 9, or (9, 9)) the ties do not cross the kept/dropped boundary: the selection is
    unambiguous and the values must agree."""
    gen = torch.Generator().manual_seed(23)
    batch = 4
    maps = [random_maps(gen, batch, 9, 5) for _ in range(3)]
    grid = torch.tensor([box_grid(8 * b, 16, 96, 48, 3) for b in range(batch)], dtype=DTYPE)
    locations = [grid, grid.clone(), random_grids(gen, batch, 3)]
    for num_matches in ((20, 20), (9, 9)):
        for l2_all in (True, False):
            actual = vicregl_local_loss(maps, locations, COEFFS, num_matches, l2_all)
            assert_parts(actual, ref_local_loss(maps, locations, COEFFS, num_matches, l2_all))


def test_local_loss_identical_boxes_ties_cross_the_boundary():
    """Identical boxes with k < N: any k positions are valid. hf_mim's selection must be valid, and its pair loss
    must equal the transcription's with the location matching taken from that selection."""
    gen = torch.Generator().manual_seed(24)
    batch = 4
    maps_i, maps_j = random_maps(gen, batch, 9, 5), random_maps(gen, batch, 9, 5)
    grid = torch.tensor([box_grid(8 * b, 16, 96, 48, 3) for b in range(batch)], dtype=DTYPE)

    def hf_mim_selection(keys_in, keys_cand, k):
        distances = torch.cdist(torch.tensor([keys_in], dtype=DTYPE), torch.tensor([keys_cand], dtype=DTYPE))
        positions, neighbours = nearest_neighbour_matches(distances, k)
        _check_valid_selection(distances, positions, neighbours, min(k, len(keys_in)))
        assert positions.tolist() == neighbours.tolist()  # identical boxes: each position's neighbour is itself
        return positions[0].tolist(), neighbours[0].tolist()

    for l2_all in (True, False):
        actual = local_pair_loss(maps_i, maps_j, grid, grid, COEFFS, (5, 2), l2_all)
        expected = ref_local_pair(maps_i, maps_j, grid, grid.clone(), COEFFS, (5, 2), l2_all, hf_mim_selection)
        assert_parts(actual, expected)


# ====================================================================================== matched VICReg + variants
def test_matched_vicreg_loss_matches_reference():
    gen = torch.Generator().manual_seed(31)
    x = random_maps(gen, 6, 3, 5)
    y = random_maps(gen, 6, 3, 5)
    xs, ys = x.tolist(), y.tolist()
    assert_parts(matched_vicreg_loss(x, y, COEFFS), ref_matched_loss(xs, ys, COEFFS))


def _wrong_variance(rows, biased=False, eps_outside=False, no_eps=False):
    centred = ref_centre(rows)
    size, dim = len(rows), len(rows[0])
    total = 0.0
    for d in range(dim):
        variance = sum(row[d] ** 2 for row in centred) / (size if biased else size - 1)
        if eps_outside:
            std = math.sqrt(variance) + REF_VARIANCE_EPS
        elif no_eps:
            std = math.sqrt(variance)
        else:
            std = math.sqrt(variance + REF_VARIANCE_EPS)
        total += max(0.0, 1.0 - std)
    return total / dim


def _wrong_covariance(rows, divisor_n=None, divisor_d=None, with_diagonal=False):
    centred = torch.tensor(ref_centre(rows), dtype=DTYPE)
    size, dim = centred.shape
    cov = sum(torch.outer(centred[b], centred[b]) for b in range(size)) / (
        size - 1 if divisor_n is None else divisor_n
    )
    mask = torch.ones(dim, dim, dtype=torch.bool) if with_diagonal else ~torch.eye(dim, dtype=torch.bool)
    return cov[mask].pow(2).sum().item() / (dim if divisor_d is None else divisor_d)


def test_variance_and_covariance_normalisation_catches_wrong_variants():
    """unbiased variance, 1e-4 inside the root, covariance / (N - 1) and / D: each plausible mistake, computed
    here, is far outside the tolerance the parity tests use, while the correct form agrees."""
    gen = torch.Generator().manual_seed(41)
    size, dim = 4, 6
    views = []
    for _ in range(2):
        e = 0.6 * torch.randn(size, dim, generator=gen, dtype=DTYPE)
        e[:, 0] = 0.5 + 1e-4 * torch.randn(size, generator=gen, dtype=DTYPE)  # a collapsed dimension: eps matters
        views.append(e)
    unit = VicregCoefficients(1.0, 1.0, 1.0)
    _, var, cov = (float(v) for v in vicreg_global_loss(views, unit))
    rows = [v.tolist() for v in views]
    correct_var = sum(ref_variance_term(r) for r in rows) / 2
    correct_cov = sum(ref_covariance_term(r) for r in rows) / 2
    assert math.isclose(var, correct_var, rel_tol=REL) and math.isclose(cov, correct_cov, rel_tol=REL)
    wrong_vars = {
        "biased variance": dict(biased=True),
        "eps outside the sqrt": dict(eps_outside=True),
        "no eps": dict(no_eps=True),
    }
    for name, kwargs in wrong_vars.items():
        wrong = sum(_wrong_variance(r, **kwargs) for r in rows) / 2
        assert not math.isclose(var, wrong, rel_tol=1e-4), name
    wrong_covs = {
        "divided by N": dict(divisor_n=size),
        "not divided by D": dict(divisor_d=1),
        "divided by D - 1": dict(divisor_d=dim - 1),
        "diagonal included": dict(with_diagonal=True),
    }
    for name, kwargs in wrong_covs.items():
        wrong = sum(_wrong_covariance(r, **kwargs) for r in rows) / 2
        assert not math.isclose(cov, wrong, rel_tol=1e-4), name


def test_matched_loss_is_per_match_index_not_flattened():
    """Local var/cov are statistics over the batch for each match index (reference pitfall 12); statistics over
    the flattened (B*M) positions would differ."""
    gen = torch.Generator().manual_seed(42)
    x = random_maps(gen, 5, 3, 4) + torch.arange(3, dtype=DTYPE)[None, :, None]  # per-index offsets
    y = random_maps(gen, 5, 3, 4)
    _, var, cov = (float(v) for v in matched_vicreg_loss(x, y, VicregCoefficients(1.0, 1.0, 1.0)))
    _, ref_var, ref_cov = ref_matched_loss(x.tolist(), y.tolist(), VicregCoefficients(1.0, 1.0, 1.0))
    assert math.isclose(var, ref_var, rel_tol=REL) and math.isclose(cov, ref_cov, rel_tol=REL)
    flat_x, flat_y = x.flatten(0, 1).tolist(), y.flatten(0, 1).tolist()
    flat_var = ref_variance_term(flat_x) / 2 + ref_variance_term(flat_y) / 2
    flat_cov = ref_covariance_term(flat_x) / 2 + ref_covariance_term(flat_y) / 2
    assert not math.isclose(var, flat_var, rel_tol=1e-4)
    assert not math.isclose(cov, flat_cov, rel_tol=1e-4)


# ====================================================================================== gradients
def test_gradcheck_global_loss():
    gen = torch.Generator().manual_seed(51)
    a = (0.3 * torch.randn(4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    b = (0.3 * torch.randn(4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    c = (0.3 * torch.randn(4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    assert torch.autograd.gradcheck(lambda *e: vicreg_global_loss(list(e), COEFFS), (a, b, c))


def test_gradcheck_matched_vicreg_loss():
    gen = torch.Generator().manual_seed(52)
    x = (0.3 * torch.randn(4, 2, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    y = (0.3 * torch.randn(4, 2, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, v: matched_vicreg_loss(u, v, COEFFS), (x, y))


def test_gradcheck_local_loss():
    """The matching is piecewise constant (no gradient through the selection); within a piece the loss is smooth."""
    gen = torch.Generator().manual_seed(53)
    m0 = (0.3 * torch.randn(3, 4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    m1 = (0.3 * torch.randn(3, 4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    grids = [random_grids(gen, 3, 2), random_grids(gen, 3, 2)]
    assert torch.autograd.gradcheck(lambda u, v: vicregl_local_loss([u, v], grids, COEFFS, (2, 1)), (m0, m1))


# ====================================================================================== the full model
def _model_inputs(gen: torch.Generator, batch: int = 4):
    pixel_values = torch.randn(batch, 2, 3, 64, 64, generator=gen, dtype=DTYPE)
    local_pixel_values = torch.randn(batch, 3, 3, 32, 32, generator=gen, dtype=DTYPE)
    locations = torch.stack([random_grids(gen, batch, 2) for _ in range(2)], dim=1).unflatten(2, (2, 2))
    local_locations = torch.stack([random_grids(gen, batch, 1) for _ in range(3)], dim=1).unflatten(2, (1, 1))
    return pixel_values, locations, local_pixel_values, local_locations


@pytest.mark.parametrize("alpha", [0.75, 1.0, 0.0])
def test_pretraining_forward_matches_reference(alpha):
    torch.manual_seed(0)
    model = VicreglForPreTraining(VicreglConfig.tiny(alpha=alpha)).double().eval()
    assert (model.maps_projector is None) == (alpha == 1.0)
    assert (model.projector is None) == (alpha == 0.0)
    gen = torch.Generator().manual_seed(61)
    pixel_values, locations, local_pixel_values, local_locations = _model_inputs(gen)
    assert locations.shape == (4, 2, 2, 2, 2) and local_locations.shape == (4, 3, 1, 1, 2)
    with torch.no_grad():
        out = model(
            pixel_values=pixel_values,
            locations=locations,
            local_pixel_values=local_pixel_values,
            local_locations=local_locations,
        )
        views = [pixel_values[:, v] for v in range(2)] + [local_pixel_values[:, v] for v in range(3)]
        grids = [locations[:, v].reshape(4, -1, 2) for v in range(2)]
        grids += [local_locations[:, v].reshape(4, -1, 2) for v in range(3)]
        embeddings, maps = [], []
        for view in views:
            backbone = model.vicregl(view, return_dict=True)
            if model.projector is not None:
                embeddings.append(model.projector(backbone.pooler_output))
            if model.maps_projector is not None:
                tokens = backbone.feature_map.reshape(view.shape[0], -1, backbone.feature_map.shape[-1])
                maps.append(model.maps_projector(tokens))
    config = model.config
    coeffs = VicregCoefficients(config.invariance_coeff, config.variance_coeff, config.covariance_coeff)
    assert (config.invariance_coeff, config.variance_coeff, config.covariance_coeff) == (25.0, 25.0, 1.0)
    expected_loss = 0.0
    if alpha > 0:
        g = ref_global_loss(embeddings, coeffs)
        assert_parts((out.global_invariance_loss, out.global_variance_loss, out.global_covariance_loss), g, rel=1e-9)
        assert math.isclose(float(out.global_loss), sum(g), rel_tol=1e-9)
        expected_loss += alpha * sum(g)
    else:
        assert out.global_loss is None and out.global_invariance_loss is None
    if alpha < 1:
        assert [m.shape[1] for m in maps] == [4, 4, 1, 1, 1]
        local = ref_local_loss(maps, grids, coeffs, tuple(config.num_matches), config.l2_all_matches)
        assert_parts((out.local_invariance_loss, out.local_variance_loss, out.local_covariance_loss), local, rel=1e-9)
        assert math.isclose(float(out.local_loss), sum(local), rel_tol=1e-9)
        expected_loss += (1 - alpha) * sum(local)
    else:
        assert out.local_loss is None and out.local_invariance_loss is None
    assert math.isclose(float(out.loss), expected_loss, rel_tol=1e-9)


# ====================================================================================== fast_vc_reg
def ref_fast_local_loss(maps, locations, coeffs, num_matches=(20, 4), l2_all_matches=True):
    """`local_loss` / `_local_loss` under `--fast-vc-reg 1`: per ordered pair, the four matched sets give only the
    raw MSE (halves per matching, both matchings summed); `inv_coeff * sum / pairs`. Variance and covariance: per
    view v, on the whole map gathered and centred over the batch: mean over (position, channel) of
    ReLU(1 - sqrt(Var_batch + 1e-4)); for each position the squared off-diagonal sum of its batch covariance / C,
    averaged over positions (the original overwrites its accumulator here, see `map_variance_covariance`: this is
    the sum over views it evidently means); both times their coefficient / number of views."""
    unit = VicregCoefficients(1.0, 0.0, 0.0)
    pairs = ref_pairs(len(maps))
    invariance = 0.0
    for i, j in pairs:
        invariance += ref_local_pair(maps[i], maps[j], locations[i], locations[j], unit, num_matches, l2_all_matches)[
            0
        ]
    variance = covariance = 0.0
    for view in maps:
        size, positions = view.shape[0], view.shape[1]
        columns = [[view[b, n].tolist() for b in range(size)] for n in range(positions)]  # per position: B rows
        channels = len(columns[0][0])
        variance += sum(ref_variance_term(column) for column in columns) / positions
        covariance += sum(ref_covariance_term(column) for column in columns) / positions
        assert channels == view.shape[2]
    return (
        coeffs.invariance * invariance / len(pairs),
        coeffs.variance * variance / len(maps),
        coeffs.covariance * covariance / len(maps),
    )


def original_fast_local_loss_literal(maps, coeffs):
    """The original's fast branch copied verbatim (variable names kept), to show what it computes: `cov_loss` is
    overwritten in the loop and ends as a (N,) tensor of the last view (not a scalar unless N = 1)."""
    var_loss = 0.0
    cov_loss = 0.0
    iter_ = 0
    for i in range(len(maps)):
        x = maps[i] - maps[i].mean(dim=0)
        std_x = torch.sqrt(x.var(dim=0) + 0.0001)
        var_loss = var_loss + torch.mean(torch.relu(1.0 - std_x))
        x = x.permute(1, 0, 2)
        *_, sample_size, num_channels = x.shape
        non_diag_mask = ~torch.eye(num_channels, device=x.device, dtype=torch.bool)
        x = x - x.mean(dim=-2, keepdim=True)
        cov_x = torch.einsum("...nc,...nd->...cd", x, x) / (sample_size - 1)
        cov_loss = cov_x[..., non_diag_mask].pow(2).sum(-1) / num_channels
        cov_loss = cov_loss + cov_loss.mean()
        iter_ = iter_ + 1
    return coeffs.variance * var_loss / iter_, coeffs.covariance * cov_loss / iter_


@pytest.mark.parametrize("l2_all_matches", [True, False])
def test_fast_vc_reg_matches_reference(l2_all_matches):
    """2 large views (3x3) + 3 small (2x2), 8 ordered pairs; variance / covariance over all 5 views."""
    gen = torch.Generator().manual_seed(71)
    batch, channels = 5, 6
    sizes = [3, 3, 2, 2, 2]
    maps = [random_maps(gen, batch, n * n, channels) for n in sizes]
    locations = [random_grids(gen, batch, n) for n in sizes]
    actual = vicregl_local_loss(maps, locations, COEFFS, (5, 2), l2_all_matches, fast_vc_reg=True)
    expected = ref_fast_local_loss(maps, locations, COEFFS, (5, 2), l2_all_matches)
    assert_parts(actual, expected)
    # the invariance is that of the default loss; variance and covariance are not
    default = vicregl_local_loss(maps, locations, COEFFS, (5, 2), l2_all_matches)
    assert math.isclose(float(actual[0]), float(default[0]), rel_tol=REL)
    assert not math.isclose(float(actual[1]), float(default[1]), rel_tol=1e-3)
    assert not math.isclose(float(actual[2]), float(default[2]), rel_tol=1e-3)
    # the original's code, verbatim: its variance agrees; its covariance is the last view's (N,) vector plus its mean
    var_literal, cov_literal = original_fast_local_loss_literal(maps, COEFFS)
    assert math.isclose(float(var_literal), float(actual[1]), rel_tol=REL)
    assert cov_literal.shape == (sizes[-1] ** 2,)
    last = maps[-1]
    per_position = [ref_covariance_term([last[b, n].tolist() for b in range(batch)]) for n in range(last.shape[1])]
    mean = sum(per_position) / len(per_position)
    for got, term in zip(cov_literal.tolist(), per_position):
        assert math.isclose(got, COEFFS.covariance * (term + mean) / len(maps), rel_tol=REL)


def test_fast_vc_reg_per_position_not_flattened():
    """The fast regularisers are statistics over the batch for each map position: per-position offsets change
    nothing (centred away), while statistics over the flattened (B*N) rows would see them."""
    gen = torch.Generator().manual_seed(72)
    maps = [random_maps(gen, 4, 4, 3) for _ in range(2)]
    shifted = [m + 3.0 * torch.arange(4, dtype=DTYPE)[None, :, None] for m in maps]
    var, cov = map_variance_covariance(maps, COEFFS)
    var_shifted, cov_shifted = map_variance_covariance(shifted, COEFFS)
    assert math.isclose(float(var), float(var_shifted), rel_tol=1e-9)
    assert math.isclose(float(cov), float(cov_shifted), rel_tol=1e-9)
    flat_var = sum(ref_variance_term(m.flatten(0, 1).tolist()) for m in shifted) / 2
    assert not math.isclose(float(var) / COEFFS.variance, flat_var, rel_tol=1e-3)


def test_gradcheck_fast_vc_reg():
    gen = torch.Generator().manual_seed(73)
    m0 = (0.3 * torch.randn(3, 4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    m1 = (0.3 * torch.randn(3, 4, 3, generator=gen, dtype=DTYPE)).requires_grad_()
    grids = [random_grids(gen, 3, 2), random_grids(gen, 3, 2)]
    assert torch.autograd.gradcheck(
        lambda u, v: vicregl_local_loss([u, v], grids, COEFFS, (2, 1), fast_vc_reg=True), (m0, m1)
    )


def test_pretraining_forward_fast_vc_reg():
    """config.fast_vc_reg reaches the loss: the model's local parts equal the transcription on its own maps; the
    global loss and the default config are untouched; a backward pass runs."""
    torch.manual_seed(0)
    config = VicreglConfig.tiny(alpha=0.75, fast_vc_reg=True)
    assert VicreglConfig.tiny().fast_vc_reg is False
    assert VicreglConfig.from_dict(config.to_dict()).fast_vc_reg is True
    with pytest.raises(ValueError, match="fast_vc_reg"):
        VicreglConfig.tiny(fast_vc_reg="yes")
    model = VicreglForPreTraining(config).double().eval()
    gen = torch.Generator().manual_seed(74)
    pixel_values, locations, local_pixel_values, local_locations = _model_inputs(gen)
    out = model(
        pixel_values=pixel_values,
        locations=locations,
        local_pixel_values=local_pixel_values,
        local_locations=local_locations,
    )
    with torch.no_grad():
        views = [pixel_values[:, v] for v in range(2)] + [local_pixel_values[:, v] for v in range(3)]
        grids = [locations[:, v].reshape(4, -1, 2) for v in range(2)]
        grids += [local_locations[:, v].reshape(4, -1, 2) for v in range(3)]
        maps = []
        for view in views:
            feature_map = model.vicregl(view, return_dict=True).feature_map
            maps.append(model.maps_projector(feature_map.reshape(view.shape[0], -1, feature_map.shape[-1])))
    coeffs = VicregCoefficients(config.invariance_coeff, config.variance_coeff, config.covariance_coeff)
    expected = ref_fast_local_loss(maps, grids, coeffs, tuple(config.num_matches), config.l2_all_matches)
    assert_parts((out.local_invariance_loss, out.local_variance_loss, out.local_covariance_loss), expected, rel=1e-9)
    out.loss.backward()

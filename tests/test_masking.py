import pytest
import torch

from hf_mim.masking import InverseBlockMasking, block_mask, masking_counts, to_absolute


def draws(masking, grid, n, seed=0, batch=8):
    generator = torch.Generator().manual_seed(seed)
    return [masking(batch, grid, generator) for _ in range(n)]


@pytest.mark.parametrize("grid", [(16, 16), (4, 4), (5, 3), (7, 11)])
def test_exact_counts_sorted_and_disjoint(grid):
    masking = InverseBlockMasking(mask_ratio=0.65, prediction_subsampling=0.5)
    n_visible, n_masked, n_predict = masking_counts(grid[0] * grid[1], 0.65, 0.5)
    for masks in draws(masking, grid, 20):
        assert masks.visible_indices.shape == (8, n_visible)
        assert masks.predict_indices.shape == (8, n_predict)
        for visible, predict in zip(masks.visible_indices, masks.predict_indices):
            assert torch.equal(visible, visible.sort().values) and len(set(visible.tolist())) == n_visible
            assert len(set(predict.tolist())) == n_predict
            assert not set(visible.tolist()) & set(predict.tolist())
            assert 0 <= int(visible.min()) and int(visible.max()) < grid[0] * grid[1]


def test_release_counts():
    assert masking_counts(256, 0.65, 0.05) == (90, 166, 8)
    with pytest.raises(ValueError, match="visible"):
        masking_counts(4, 0.1, 0.5)


def test_without_roll_the_block_is_biased():
    """Why CAPI rolls: a truncated block never reaches the last cells of the bottom row on this grid."""
    masking = InverseBlockMasking(mask_ratio=0.6, prediction_subsampling=0.3, roll=False)
    seen = torch.zeros(30, dtype=torch.bool)
    for masks in draws(masking, (6, 5), 60):
        seen[masks.visible_indices.flatten()] = True
    assert not seen[25:].all()


def test_reachability_of_every_position():
    """With the roll every cell, last row and column included, is visible and predicted at some point."""
    grid = (6, 5)
    masking = InverseBlockMasking(mask_ratio=0.6, prediction_subsampling=0.3, roll=True)
    seen_visible, seen_predicted = torch.zeros(30, dtype=torch.bool), torch.zeros(30, dtype=torch.bool)
    for masks in draws(masking, grid, 60):
        seen_visible[masks.visible_indices.flatten()] = True
        seen_predicted[masks.predict_indices.flatten()] = True
    assert seen_visible.all() and seen_predicted.all()
    last_row = torch.arange(24, 30)
    last_column = torch.arange(4, 30, 5)
    assert seen_visible[last_row].all() and seen_visible[last_column].all()


def test_visible_set_is_a_rolled_block():
    """Un-rolling by some shift makes the visible cells the row-major prefix of a rectangle."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(30):
        mask = block_mask((8, 8), 20, roll=True, generator=generator)
        assert int(mask.sum()) == 20
        found = False
        for dy in range(8):
            for dx in range(8):
                unrolled = torch.roll(mask, (-dy, -dx), (0, 1))
                rows, cols = unrolled.nonzero(as_tuple=True)
                top, left, bottom, right = rows.min(), cols.min(), rows.max(), cols.max()
                box = torch.zeros_like(unrolled)
                box[top : bottom + 1, left : right + 1] = True
                prefix = torch.zeros(64, dtype=torch.bool)
                prefix[box.flatten().nonzero().flatten()[:20]] = True
                if torch.equal(prefix.reshape(8, 8), unrolled):
                    found = True
                    break
            if found:
                break
        assert found


def test_aspect_ratio_bounds():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = block_mask((16, 16), 90, min_aspect=0.5, roll=False, generator=generator)
        rows, cols = mask.nonzero(as_tuple=True)
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert 90 <= height * width and 0.3 < height / width < 3.5


def test_seeded_reproducibility_and_variety():
    masking = InverseBlockMasking()
    a = draws(masking, (16, 16), 3, seed=7)
    b = draws(masking, (16, 16), 3, seed=7)
    c = draws(masking, (16, 16), 3, seed=8)
    for x, y in zip(a, b):
        assert torch.equal(x.visible_indices, y.visible_indices) and torch.equal(x.predict_indices, y.predict_indices)
    assert not all(torch.equal(x.visible_indices, z.visible_indices) for x, z in zip(a, c))


def test_to_absolute_matches_original_layout():
    local = torch.tensor([[0, 3], [1, 2]])
    assert to_absolute(local, 16).tolist() == [0, 3, 17, 18]

"""The views behind `vitx inspect`, against hand-built cases and brute-force references."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILIES, fingerprint, images_for, reference_attention, tiny_timm, tiny_torchvision

from vitx import VitxError, figures, views
from vitx.capture.layout import TokenLayout
from vitx.reference_models.vit import ViT, ViTConfig


def layout_for(grid, prefix=1):
    names = {"cls": 0, "dist": 1}
    return TokenLayout(prefix={k: v for k, v in names.items() if v < prefix}, num_prefix=prefix, grid=grid)


def brute_force_mean_distance(grid, per_pixel):
    """Average Euclidean distance between patch centres over all ordered pairs, by loops."""
    cells = list(itertools.product(range(grid[0]), range(grid[1])))
    total = sum(math.hypot((a[0] - b[0]) * per_pixel[0], (a[1] - b[1]) * per_pixel[1]) for a in cells for b in cells)
    return total / len(cells) ** 2


# ------------------------------------------------------------------ attention distance


@pytest.mark.parametrize("grid,per_pixel", [((3, 3), (16, 16)), ((2, 5), (4, 8))])
def test_attention_to_itself_has_distance_zero_and_entropy_zero(grid, per_pixel):
    layout = layout_for(grid)
    n = layout.num_tokens
    attention = torch.eye(n).expand(2, 3, n, n)
    assert torch.allclose(views.attention_distance(attention, layout, per_pixel), torch.zeros(3))
    assert torch.allclose(views.attention_entropy(attention), torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize("grid,per_pixel", [((3, 3), (16, 16)), ((2, 5), (4, 8)), ((7, 7), (4, 4))])
def test_uniform_attention_matches_the_mean_pairwise_distance(grid, per_pixel):
    layout = layout_for(grid, prefix=2)
    n = layout.num_tokens
    attention = torch.full((2, 4, n, n), 1.0 / n)
    expected = brute_force_mean_distance(grid, per_pixel)
    assert torch.allclose(views.attention_distance(attention, layout, per_pixel), torch.full((4,), expected), rtol=1e-5)
    assert torch.allclose(views.attention_entropy(attention), torch.full((4,), math.log(n)), rtol=1e-5)


def test_hand_computed_distance_with_attention_on_the_cls_token():
    # grid 1x3, 10 px patches. Patch 0 looks half at cls and half at patch 2 (20 px away):
    # renormalised over patches that is all on patch 2 -> 20. Patch 1 splits 0.5/0.5
    # between patches 0 and 2 -> 10. Patch 2 looks at itself -> 0. Mean: 10.
    layout = layout_for((1, 3))
    attention = torch.tensor([[0.25, 0.25, 0.25, 0.25],
                              [0.50, 0.00, 0.00, 0.50],
                              [0.00, 0.50, 0.00, 0.50],
                              [0.00, 0.00, 0.00, 1.00]])[None, None]
    assert views.attention_distance(attention, layout, (10, 10)).item() == pytest.approx(10.0)
    # entropy rows: log 4, log 2, log 2, 0 -> mean (log 4 + 2 log 2) / 4 = log 2
    assert views.attention_entropy(attention).item() == pytest.approx(math.log(2))


def test_statistics_average_the_per_image_values_and_do_not_depend_on_batching():
    model = tiny_timm("deit_tiny_distilled_patch16_224")
    x = images_for((32, 32), batch=5)
    before = fingerprint(model)
    stats = views.attention_statistics(model, x, batch_size=2)
    assert fingerprint(model) == before
    single = views.attention_statistics(model, x, batch_size=5)
    assert torch.allclose(stats.distance, single.distance, atol=1e-5)
    assert torch.allclose(stats.entropy, single.entropy, atol=1e-5)
    layout = layout_for((4, 4), prefix=2)
    expected_d = torch.stack([views.attention_distance(a, layout, (8, 8)) for a in reference_attention(model, x)])
    expected_h = torch.stack([views.attention_entropy(a) for a in reference_attention(model, x)])
    assert stats.distance.shape == (3, 2) and stats.count == 5 and stats.num_tokens == 18
    assert torch.allclose(stats.distance, expected_d, atol=1e-4)
    assert torch.allclose(stats.entropy, expected_h, atol=1e-4)
    assert stats.uniform_distance == pytest.approx(brute_force_mean_distance((4, 4), (8, 8)))
    assert stats.uniform_entropy == pytest.approx(math.log(18))
    # every head is somewhere between looking at itself and looking everywhere
    assert (stats.distance >= 0).all() and (stats.entropy <= math.log(18) + 1e-5).all()


# ------------------------------------------------------------------ attention maps


def test_attention_maps_are_the_token_rows_of_every_layer_and_head():
    model = tiny_timm("deit_tiny_distilled_patch16_224")
    x = images_for((32, 32), batch=1)
    result = views.attention_maps(model, x)
    assert set(result.maps) == {"cls", "dist"}
    reference = torch.stack([a[0] for a in reference_attention(model, x)])  # (L, H, N, N)
    for token, row in (("cls", 0), ("dist", 1)):
        assert result.maps[token].shape == (3, 2, 4, 4)
        assert torch.allclose(result.maps[token], reference[:, :, row, 2:].reshape(3, 2, 4, 4), atol=1e-5)


def test_attention_maps_of_a_model_without_prefix_tokens_use_the_mean_patch():
    factory, _, size = FAMILIES["gap_no_cls"]
    model = factory()
    x = images_for(size, batch=1)
    result = views.attention_maps(model, x)
    reference = torch.stack([a[0] for a in reference_attention(model, x)])
    assert list(result.maps) == ["mean"]
    assert torch.allclose(result.maps["mean"], reference.mean(dim=2).reshape(3, 2, 4, 4), atol=1e-5)


# ------------------------------------------------------------------ patch embedding


def test_patch_filter_components_recover_the_directions_the_filters_vary_along():
    model = tiny_timm("vit_tiny_patch16_224")
    conv = model.patch_embed.proj  # 24 filters of 3 x 8 x 8
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(3 * 64, 3, generator=generator))
    u, v, offset = basis.T
    a = torch.randn(24, generator=generator) * 5.0
    b = torch.randn(24, generator=generator) * 1.0
    with torch.no_grad():
        conv.weight.copy_((a[:, None] * u + b[:, None] * v + offset * 3.0).reshape(24, 3, 8, 8))
    components, ratio = views.patch_filters(model, count=4)
    assert components.shape == (4, 3, 8, 8)
    flat = components.flatten(1)
    assert abs(float(flat[0] @ u)) == pytest.approx(1.0, abs=1e-4)  # the mean (offset) is removed
    assert abs(float(flat[1] @ v)) == pytest.approx(1.0, abs=1e-4)
    ac, bc = a - a.mean(), b - b.mean()
    assert ratio[0].item() == pytest.approx(float(ac @ ac / (ac @ ac + bc @ bc)), rel=1e-3)
    assert ratio[2:].abs().max() < 1e-6


def test_patch_activations_are_the_patch_convolution_of_the_input():
    model = tiny_torchvision()
    x = images_for((32, 32), batch=1)
    activations, view = views.patch_activations(model, x)
    expected = F.conv2d(x, model.conv_proj.weight, model.conv_proj.bias, stride=8)[0]
    assert activations.shape == (24, 4, 4) and view.shape == (32, 32, 3)
    assert torch.allclose(activations, expected, atol=1e-5)


# ------------------------------------------------------------------ position embedding


def test_position_similarity_of_a_row_and_column_code():
    # embedding of (i, j) = one-hot(row i) ++ one-hot(column j): cosine similarity is 1 for
    # itself, 1/2 for the rest of its row and column, 0 elsewhere
    grid = (3, 4)
    embedding = torch.cat([F.one_hot(torch.arange(3).repeat_interleave(4), 3),
                           F.one_hot(torch.arange(4).repeat(3), 4)], dim=1).float()
    similarity = views.position_similarity(embedding, grid)
    assert similarity.shape == (3, 4, 3, 4)
    for i, j, k, m in itertools.product(range(3), range(4), range(3), range(4)):
        assert similarity[i, j, k, m].item() == pytest.approx(((i == k) + (j == m)) / 2)


@pytest.mark.parametrize("name,rows", [
    ("vit", lambda m: m.pos_embed[0, 1:]),
    ("deit_distilled", lambda m: m.pos_embed[0, 2:]),
    ("registers", lambda m: m.pos_embed[0, -16:]),
    ("torchvision", lambda m: m.encoder.pos_embedding[0, 1:]),
])
def test_position_embedding_is_found_for_each_family(name, rows):
    model = FAMILIES[name][0]()
    embedding, grid = views.position_embedding(model)
    assert grid == (4, 4)
    assert torch.equal(embedding, rows(model).detach())


def test_position_embedding_of_a_reference_deit_skips_both_prefix_tokens():
    model = ViT(ViTConfig(img_size=28, patch_size=4, dim=16, depth=1, heads=2, distill_token=True))
    embedding, grid = views.position_embedding(model)
    assert grid == (7, 7) and torch.equal(embedding, model.pos_embed[0, 2:].detach())


def test_a_model_without_learned_positions_says_so():
    model = tiny_timm("vit_tiny_patch16_224", pos_embed="none")
    with pytest.raises(VitxError, match="no learned position embedding"):
        views.position_embedding(model)


# ------------------------------------------------------------------ figures


def test_figures_have_one_tile_per_layer_and_head():
    grid = figures.attention_grid(np.random.rand(3, 2, 4, 4), np.zeros((32, 32, 3), np.uint8), cell=40)
    # rows: 3 layers of 40 px (+2 gap) under an 18 px header; columns: 2 heads of 42 px after the labels
    assert grid.shape[0] == 18 + 3 * 42 and grid.dtype == np.uint8
    similarity = figures.position_similarity_figure(np.random.rand(3, 4, 3, 4), cell=20)
    assert similarity.shape[0] == 18 + 3 * 22
    plot = figures.layer_scatter({"a": np.ones((4, 2)), "b": np.zeros((4, 2))}, "t", "px", reference={"uniform": 0.5})
    assert plot.std() > 0  # something is drawn

"""Shapley values of the patches (plugins/shapley.py): exact against captum's ShapleyValues
(every order walked), complete (the efficiency axiom) for any number of sampled orders, and
the value of each patch of a hand-built game."""
import pytest
import torch

import vitx
from helpers import PixelGame, images_for, tiny_timm


def loud(model):
    """Sharpen the head so the game is far from additive-and-flat (a check that can fail)."""
    with torch.no_grad():
        model.head.weight.mul_(20)
    return model


def test_exact_shapley_equals_captum():
    """Four players (2 x 2 squares of 2 x 2 patches) and 24 orders: every order, so vitx's value is
    the exact Shapley value; captum's ShapleyValues enumerates the same orders."""
    from captum.attr import ShapleyValues

    model = loud(tiny_timm("deit_tiny_patch16_224"))
    x = images_for((32, 32), batch=2)
    ours = vitx.explain(model, x, method="shapley", target=[1, 3], permutations=24, cells=2, baseline="mean")
    quadrant = torch.arange(4).view(2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1)  # (32, 32) player ids
    theirs = ShapleyValues(model).attribute(x, baselines=x.mean(dim=(-2, -1), keepdim=True).expand_as(x),
                                            target=[1, 3], feature_mask=quadrant[None, None].expand(1, 3, 32, 32).contiguous())
    per_player = theirs[:, 0, ::16, ::16].flatten(1)  # every pixel of a player carries its value
    patches = ours.relevance[:, 1:].view(2, 4, 4)
    player_sums = patches.view(2, 2, 2, 2, 2).sum(dim=(2, 4)).flatten(1)  # the 4 patches of each square
    assert per_player.std() > 0.1 * per_player.abs().mean()
    torch.testing.assert_close(player_sums, per_player, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(patches[:, 0, 0], patches[:, 1, 1])  # a square's value is spread evenly


def test_sampled_values_are_complete():
    """Each walk's marginals telescope: the values sum to f(x) - f(baseline), for 2 orders as for 16."""
    model = loud(tiny_timm("deit_tiny_patch16_224"))
    x = images_for((32, 32), batch=3)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[:, 2]
    for count in (2, 16):
        exp = vitx.explain(model, x, method="shapley", target=2, permutations=count, baseline="dataset_mean")
        torch.testing.assert_close(exp.relevance.sum(-1), gap, atol=1e-4, rtol=1e-4)
    other = vitx.explain(model, x, method="shapley", target=2, permutations=2, seed=1, baseline="dataset_mean")
    assert not torch.allclose(other.relevance, exp.relevance)


class PairGame(PixelGame):
    """Score = a * [patch 1 kept] + b * [patch 2 kept] + c * [patches 1 and 2 both kept], read from
    the pixels (kept patches are 1, removed ones 0): Shapley gives a + c/2, b + c/2, 0 elsewhere."""

    def value(self, x):
        one, two = x[:, :, 0:8, 8:16].mean(dim=(1, 2, 3)), x[:, :, 0:8, 16:24].mean(dim=(1, 2, 3))
        return 2.0 * one - 1.0 * two + 3.0 * one * two


def test_hand_computed_interaction_is_split_evenly():
    """16 players, 6 sampled orders, yet exact: in each antithetic pair (an order and its reverse)
    patch 2 comes before patch 1 exactly once, so a pairwise interaction is split evenly."""
    exp = vitx.explain(PairGame().eval(), torch.ones(1, 3, 32, 32), method="shapley", target=0, permutations=6,
                       baseline="dataset_mean")
    expected = torch.zeros(16)
    expected[1], expected[2] = 2.0 + 1.5, -1.0 + 1.5
    torch.testing.assert_close(exp.relevance[0], expected)


def test_options_are_not_coerced_silently():
    """steps=2.5 became 2, True 1 and '3' 3 in the library (the CLI refused 2.5); shapley's
    permutations 1 / 3 / 5 walked 2 / 2 / 4 orders. Each is now an error naming what is wrong;
    an integral float and an -o text stay what they say."""
    model = tiny_timm()
    x = images_for((32, 32), batch=1)
    for value in (2.5, True, "3", [3]):
        with pytest.raises(vitx.VitxError, match="option steps expects int"):
            vitx.explain(model, x, method="integrated_gradients", steps=value)
    with pytest.raises(vitx.VitxError, match="option discard_ratio expects float"):
        vitx.explain(model, x, method="rollout", discard_ratio="0.5")
    for odd in (1, 3, 5):
        with pytest.raises(vitx.VitxError, match="permutations must (be a multiple of 2|be in)"):
            vitx.explain(model, x, method="shapley", permutations=odd)
    assert vitx.explain(model, x, method="integrated_gradients", steps=4.0).maps.shape[0] == 1
    from vitx.cli.method_options import per_method

    assert per_method({"steps": "8"}, ["integrated_gradients"]) == {"integrated_gradients": {"steps": 8}}
    with pytest.raises(vitx.VitxError, match=r"expects int, got '2\.5'"):
        per_method({"steps": "2.5"}, ["integrated_gradients"])

"""Shapley values of the patches, by permutation sampling. Only the model's forward is used.

The players are the patches (or, with `cells`, squares of patches); a coalition S is the image
with the patches of S kept and every other patch replaced by the baseline, exactly as the
perturbation metrics remove them (`Evidence.masked_scores`), and its value is the target score.
A patch's Shapley value is its marginal change of the score, v(S + p) - v(S), averaged over the
orders in which the patches can join. Why this and not integrated gradients: IG averages
gradients on the straight line where every patch fades in *together*; the deletion and
insertion curves remove and add *whole patches*, so the marginal value of a patch in a
coalition of kept patches is what they measure, and Shapley averages exactly that over every
coalition size (both ends of the curves at once).

Estimator (Castro, Gomez & Tejada 2009): walk a random order, adding one player at a time; each
walk costs players - 1 forwards (the empty and the full image are shared) and its marginals sum
to v(all) - v(none) exactly, so every estimate is *complete* (efficiency), whatever the number
of orders. Orders come in antithetic pairs (an order and its reverse; Mitchell et al. 2022),
which cancels much of the variance. When `permutations` reaches players!, every order is walked
once: the exact Shapley value. Seeded: the same orders for every image, so a batch gives what
each image gives alone.
"""
import itertools
import math

import torch
import torch.nn.functional as F

from vitx.plugin import MASKED_IMAGES_OPTION, MAX_SEED, MODEL, Explainer, Option, baseline_option, hookimpl


def player_of_patch(grid, cells):
    """(h*w,) which player (cell of a `cells` grid, row-major) each patch of `grid` belongs to."""
    (gh, gw), (ch, cw) = grid, cells
    rows = torch.arange(gh)[:, None] * ch // gh
    cols = torch.arange(gw)[None, :] * cw // gw
    return (rows * cw + cols).flatten()


def orders(players, count, generator):
    """(count, players) orders of the players: all of them when count >= players! (exact), else
    count // 2 random ones each followed by its reverse (antithetic pairs)."""
    if count >= math.factorial(players):
        return torch.tensor(list(itertools.permutations(range(players))))
    half = [torch.randperm(players, generator=generator) for _ in range(max(1, count // 2))]
    return torch.stack([o for order in half for o in (order, order.flip(0))])


class Shapley(Explainer):
    name = "shapley"
    summary = ("Shapley value of each patch: its marginal change of the target score when it joins the kept "
               "patches (the rest at the baseline), averaged over sampled join orders; complete")
    paper = ("Castro, Gomez & Tejada 2009, 'Polynomial calculation of the Shapley value based on sampling' "
             "(Strumbelj & Kononenko 2010 for explanations)")
    requires = (MODEL,)
    forward_only = True
    options = (
        Option("permutations", int, 16, "join orders walked, an even number (antithetic pairs: an order and its "
               "reverse); players! or more: every order once, exact", minimum=2, maximum=10_000, step=2),
        Option("cells", int, 0, "side of the player grid, squares of patches (0: every patch is a player)",
               minimum=0, maximum=1024),
        baseline_option("here the patches outside the coalition"),
        Option("seed", int, 0, "seed of the orders", minimum=0, maximum=MAX_SEED),
        MASKED_IMAGES_OPTION,
    )

    def explain(self, evidence):
        pixels, layout = evidence.pixels, evidence.layout
        grid = layout.grid
        cells = grid if self.cells == 0 else (min(self.cells, grid[0]), min(self.cells, grid[1]))
        owner = player_of_patch(grid, cells).to(pixels.device)
        players = cells[0] * cells[1]
        fill = evidence.baseline(self.baseline)
        ends = evidence.masked_scores(fill, pixels.new_tensor([0.0, 1.0]).view(2, 1, 1, 1), 2)  # (2, B)
        walks = orders(players, self.permutations, torch.Generator().manual_seed(self.seed)).to(pixels.device)
        joined = torch.arange(1, players, device=pixels.device)[:, None]  # k players joined, k = 1 .. P-1
        values = pixels.new_zeros(pixels.shape[0], players, dtype=torch.float64)
        for order in walks:
            kept = (order.argsort()[None, :] < joined).float()  # (P-1, P): a player is in once its rank < k
            masks = F.interpolate(kept[:, owner].view(-1, 1, *grid), size=pixels.shape[-2:], mode="nearest")
            inner = evidence.masked_scores(fill, masks, self.internal_batch_size) if players > 1 else ends[:0]
            curve = torch.cat([ends[:1], inner, ends[1:]]).double()  # (P+1, B): score after k players joined
            values[:, order] += (curve[1:] - curve[:-1]).T
        values /= len(walks)
        per_patch = (values[:, owner] / torch.bincount(owner, minlength=players)[owner]).to(pixels.dtype)
        relevance = per_patch.new_zeros(pixels.shape[0], layout.num_tokens)
        relevance[:, layout.patch_start:layout.patch_start + layout.num_patches] = per_patch
        return relevance


@hookimpl
def vitx_register_explainers(register):
    register(Shapley)

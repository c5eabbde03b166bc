"""Hiera (timm `Hiera` and SAM2's `HieraDet`) explained by the attention-flow methods, against a
dense reference.

vitx records mask-unit attention as window layers over each stage's grid (slots mapped through
Hiera's unrolled token order) and the pooled-query blocks as pooled window layers whose
residual is the max pool (vitx.capture.adapters.timm_hiera); tests/hiera_reference.py
recomputes every block on the grid in plain row-major order (timm's own Reroll undoes the
token order), with full attention masked to mask units, and the methods are plain dense
products of those matrices. SAM2's Hiera is recomputed the same way on its padded window frame.
Shared checks come from test_pooled_stages.
"""
import pytest
import torch

import vitx
from compat_rows import hiera_model
from helpers import assert_refused_before_any_forward, images_for
from test_pooled_stages import (  # noqa: F401 (the shared checks run here on the Hiera models)
    models_fixture, test_batch_equals_single, test_methods_equal_the_dense_reference,
    test_recorded_layers_are_the_dense_attention, test_reference_is_the_model)
from vitx.capture.pooled_windows import PooledWindows
from vitx.capture.windows import Windowed

# 64 x 96 px -> grids 16x24, 8x12, 4x6, 2x3; 2 x 3 mask units of 8x8, 4x4, 2x2 tokens. Blocks:
# mask units (2), pooled mask units, mask units, pooled mask units, global, pooled global
HIERA = dict(img_size=(64, 96), stages=(2, 2, 2, 1))


def hiera(**kwargs):
    return lambda: hiera_model(**HIERA, **kwargs)


def abswin():
    """hiera_small_abswin_256 shrunk (its LayerScale of 1e-5 made 1: the blocks would barely count)."""
    return hiera_model(name="hiera_small_abswin_256", img_size=(64, 96), stages=(1, 1, 1, 1), dim_mul=2.0,
                       init_values=1.0)


MODELS = {
    "timm_hiera": (hiera(), (64, 96), (16, 24)),
    # two poolings only: the last stage's tokens stay partly unrolled (global attention over them)
    "timm_hiera_q_pool_2": (hiera(q_pool=2), (64, 96), (16, 24)),
    # window position embedding, and a residual pooled without projection (max and mean pools side by side)
    "timm_hiera_abswin": (abswin, (64, 96), (16, 24)),
    # SAM2: a 16x24 grid in 8x8 windows, pooled to 8x12 in 4x4 windows; then 6x6 windows (8x12
    # padded to 12x12), pooled to 4x6 in 3x3 windows (padded to 6x6); global attention; 2x2
    # windows pooled to 2x3 (timm's global attention cannot pool)
    "timm_hieradet": (lambda: hiera_model(name="sam2_hiera_tiny", stages=(1, 2, 2, 1), global_att_blocks=(4,),
                                          window_spec=(8, 6, 2, 2)), (64, 96), (16, 24)),
}


setup = models_fixture(MODELS)


def test_layers_are_windows_and_pooled_windows():
    model = MODELS["timm_hiera"][0]()
    with torch.no_grad(), vitx.record_attention(model) as rec:
        model(images_for((64, 96), batch=1))
    kinds = [(type(a).__name__, a.grid, a.blocks.shape[2]) for a in rec.attentions]
    assert kinds == [("Windowed", (16, 24), 6)] * 2 + [("PooledWindows", (8, 12), 6), ("Windowed", (8, 12), 6),
                                                       ("PooledWindows", (4, 6), 6), ("Windowed", (4, 6), 1),
                                                       ("PooledWindows", (2, 3), 1)]
    # every window of the first layer is one 8x8 block of the grid
    index = rec.attentions[0].index
    rows, cols = index // 24, index % 24
    assert ((rows // 8)[:, :1] == rows // 8).all() and ((cols // 8)[:, :1] == cols // 8).all()
    assert sorted(index.flatten().tolist()) == list(range(16 * 24))
    assert isinstance(rec.attentions[0], Windowed) and isinstance(rec.attentions[2], PooledWindows)


@pytest.mark.parametrize("name", ["timm_hiera", "timm_hieradet"])
def test_recording_leaves_the_output_unchanged(name):
    model, x = MODELS[name][0](), images_for((64, 96), batch=2)
    fused = [block.attn.fused_attn for block in model.blocks]
    with torch.no_grad():
        expected = model(x)
        with vitx.record_attention(model):
            got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)
    assert [block.attn.fused_attn for block in model.blocks] == fused


@pytest.mark.parametrize("name,family", [("timm_hiera", "Hiera"), ("timm_hieradet", r"Hiera \(SAM2\)")])
def test_methods_that_cannot_read_stage_layers_refuse_before_any_forward(name, family):
    assert_refused_before_any_forward(MODELS[name][0](), MODELS[name][1], family)

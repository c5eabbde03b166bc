"""Attention flow through pooled hierarchical ViTs (PiT, PVTv2: timm, Hugging Face; Twins, whose
window and sub-sampled layers alternate; MViTv2) against a dense reference.

vitx records each layer as attention from its queries to its (pooled) keys
(vitx.capture.stages.Pooled) and chains the stages through the pooling between them;
tests/window_reference.py recomputes every layer's attention from the block's own weights,
multiplies pooled keys back onto the tokens by a plain matrix and composes dense matrices.
Maps must agree image by image (correlation > 0.999), for every attention-flow method and
option that changes which entries count.
"""
import pytest
import torch

import vitx
import window_reference as ref
from compat_rows import _sharpen, loud_head, timm_model
from helpers import assert_refused_before_any_forward, images_for
from test_windows import CASES, TARGETS, correlation
from vitx.capture.pooled_windows import PooledWindows
from vitx.capture.windows import Windowed
from vitx.errors import VitxError

# odd grids (PiT: 15x23 -> 8x12 -> 4x6, border tokens pooled from fewer sources; PVTv2: 2x3
# keys of a 4x6 grid at sr 2, 7x7 adaptive bins over smaller grids in the linear variant)
PIT = dict(img_size=(32, 48), patch_size=4, stride=2, depth=(2, 1, 1), heads=(2, 2, 2), base_dims=(12, 12, 12))
PVT = dict(depths=(2, 1, 1, 1), embed_dims=(16, 16, 24, 24), num_heads=(1, 2, 2, 2), sr_ratios=(4, 2, 2, 1))


def pvt(name):
    """A tiny PVTv2 whose keys (half of `kv`, not sharpened by name) are sharpened too."""
    def build():
        model = timm_model(name, **PVT)()
        with torch.no_grad():
            for block in (b for stage in model.stages for b in stage.blocks):
                block.attn.kv.weight[:block.attn.dim].mul_(6.0)
        return loud_head(model)

    return build


def hf_pvt(linear=False):
    """A random-init transformers PvtV2ForImageClassification, as `pvt` (keys sharpened)."""
    def build():
        import transformers

        torch.manual_seed(0)
        config = transformers.PvtV2Config(depths=list(PVT["depths"]), hidden_sizes=list(PVT["embed_dims"]),
                                          num_attention_heads=list(PVT["num_heads"]), sr_ratios=list(PVT["sr_ratios"]),
                                          linear_attention=linear, num_labels=5)
        model = transformers.PvtV2ForImageClassification(config).eval()
        _sharpen(model)
        return loud_head(model)

    return build


def mvit(cls_token=False, **kwargs):
    """A tiny timm MViTv2 (16x16 -> 8x8 -> 4x4, keys pooled 4x then 2x then 1x); its pooled q and k
    are normalised after the projection, so the norms' scales are sharpened too."""
    def build():
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

        torch.manual_seed(0)
        cfg = MultiScaleVitCfg(depths=(2, 1, 1), embed_dim=(16, 24, 32), num_heads=(1, 2, 2), use_cls_token=cls_token)
        model = MultiScaleVit(cfg, img_size=(64, 64), num_classes=5, **kwargs).eval()
        _sharpen(model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("norm_q.weight", "norm_k.weight")):
                    p.mul_(3.0)
        return loud_head(model)

    return build


TWINS = dict(img_size=(64, 128), depths=(2, 1, 2, 1), embed_dims=(16, 16, 24, 24), num_heads=(1, 2, 2, 2),
             sr_ratios=(4, 2, 2, 1))


def twins(name, **kwargs):
    """A tiny Twins (grids 16x32 -> 8x16 -> 4x8 -> 2x4; 3x3 windows pad every grid); its sub-sampled keys
    (half of `kv`) sharpened too. (PCPVT, sub-sampled layers only, is PVTv2's case; its
    gradient maps at this size are too flat for a check that can fail.)"""
    def build():
        model = timm_model(name, **TWINS, **kwargs)()
        with torch.no_grad():
            for block in (b for blocks in model.blocks for b in blocks):
                if hasattr(block.attn, "kv"):
                    block.attn.kv.weight[:block.attn.dim].mul_(6.0)
        return loud_head(model)

    return build


MODELS = {
    "timm_pit": (lambda: loud_head(timm_model("pit_ti_224", **PIT)()), (32, 48), (15, 23)),
    "timm_pit_distilled": (lambda: loud_head(timm_model("pit_ti_distilled_224", **PIT)()), (32, 48), (15, 23)),
    "timm_pvt_v2": (pvt("pvt_v2_b0"), (64, 96), (16, 24)),
    "timm_pvt_v2_linear": (pvt("pvt_v2_b2_li"), (64, 96), (16, 24)),
    "hf_pvt_v2": (hf_pvt(), (64, 96), (16, 24)),
    "hf_pvt_v2_linear": (hf_pvt(linear=True), (64, 96), (16, 24)),
    "timm_twins_svt": (twins("twins_svt_small", wss=(4, 4, 2, 2)), (64, 128), (16, 32)),
    "timm_twins_svt_padded": (twins("twins_svt_small", wss=(3, 3, 3, 3)), (64, 128), (16, 32)),
    "timm_mvitv2": (mvit(), (64, 64), (16, 16)),
    "timm_mvitv2_cls": (mvit(cls_token=True), (64, 64), (16, 16)),
}


def models_fixture(models):
    """The module's `setup` fixture over a table name -> (build, image size, first grid): the
    model, two images and their dense references (other test modules reuse the checks below)."""
    @pytest.fixture(scope="module", params=sorted(models))
    def setup(request):
        build, size, grid = models[request.param]
        model = build()
        x = images_for(size, batch=2)
        references = [ref.Reference(model, x[i:i + 1], TARGETS[i]) for i in range(2)]
        return model, x, references, grid

    return setup


setup = models_fixture(MODELS)


def test_reference_is_the_model(setup):
    """The dense recomputation reproduces the model's output (so its attention is the model's)."""
    model, x, references, grid = setup
    ref.assert_reproduces(model, x, references)
    assert references[0].grids[0] == grid and len(set(references[0].grids)) >= 3


def test_recorded_layers_are_the_dense_attention(setup):
    model, x, references, grid = setup
    with torch.no_grad(), vitx.record_attention(model) as rec:
        model(x)
    prefix = references[0].prefix
    assert rec.num_layers == len(references[0].attentions) and rec.layout.grid == grid
    assert rec.layout.num_prefix == prefix and rec.layout.query_tokens == references[0].attentions[-1].shape[-2]
    for layer, recorded in enumerate(rec.attentions):
        for i in range(2):
            r = references[i]
            values = recorded.dense() if isinstance(recorded, (Windowed, PooledWindows)) else recorded.blocks  # windows
            torch.testing.assert_close(values[i], r.attentions[layer], atol=5e-4, rtol=1e-3)
            torch.testing.assert_close(recorded.dense()[i].mean(0), r.flow(layer, r.attentions[layer].mean(0)),
                                       atol=5e-4, rtol=1e-3)


@pytest.mark.parametrize("method,options,expected", CASES, ids=lambda c: str(c) if isinstance(c, (str, dict)) else "")
def test_methods_equal_the_dense_reference(setup, method, options, expected):
    model, x, references, grid = setup
    explanation = vitx.explain(model, x, method=method, target=TARGETS, **options)
    assert explanation.maps.shape == (2, *grid)
    prefix = references[0].prefix
    for i in range(2):
        want, got = expected(references[i])[prefix:], explanation.relevance[i][prefix:]  # the grid's tokens
        # (1 %: the mean query's first-layer row of PVTv2 sums nearly even attention over all keys)
        assert want.std() > 0.01 * want.abs().mean(), "reference map is flat: the check could not fail"
        assert correlation(got, want) > 0.999, (method, options, i, correlation(got, want))
        torch.testing.assert_close(got, want.float(), atol=2e-3 * want.abs().max().item(), rtol=1e-2)


def test_batch_equals_single(setup):
    model, x, references, grid = setup
    for method in ("rollout", "grad_rollout", "chefer2021"):
        batch = vitx.explain(model, x, method=method, target=TARGETS).relevance
        for i in range(2):
            single = vitx.explain(model, x[i:i + 1], method=method, target=TARGETS[i]).relevance[0]
            torch.testing.assert_close(batch[i], single, atol=1e-4 * single.abs().max().item(), rtol=1e-4,
                                       msg=lambda m: f"{method}: {m}")


def test_other_tokens_of_the_last_stage_are_explained():
    """PiT: the mean of the last stage's grid, or one of its tokens, instead of the class token."""
    model = MODELS["timm_pit"][0]()
    x = images_for((32, 48), batch=2)
    references = [ref.Reference(model, x[i:i + 1], TARGETS[i]) for i in range(2)]
    n = references[0].attentions[-1].shape[-2]
    queries = {"mean": torch.cat([torch.zeros(1), torch.full((n - 1,), 1 / (n - 1))]),
               7: torch.nn.functional.one_hot(torch.tensor(7), n).float()}
    for token, query in queries.items():
        explanation = vitx.explain(model, x, method="chefer2021", target=TARGETS, token=token)
        for i, r in enumerate(references):
            r.query = lambda: query
            assert correlation(explanation.relevance[i][1:], ref.chefer(r)[1:]) > 0.999, token
    with pytest.raises(VitxError, match=r"no token 'reg'; valid tokens: 'cls', 'mean'"):
        vitx.explain(model, x, method="rollout", token="reg")


def test_a_class_token_the_head_does_not_read_is_not_explained():
    """MViTv2 with a class token and an average-pool head: the default token is the mean of
    the last stage's grid (the class token is left out)."""
    model = mvit(cls_token=True, global_pool="avg")()
    x = images_for((64, 64), batch=2)
    references = [ref.Reference(model, x[i:i + 1], TARGETS[i]) for i in range(2)]
    explanation = vitx.explain(model, x, method="chefer2021", target=TARGETS)
    assert explanation.token == "mean"
    n = references[0].attentions[-1].shape[-2]
    for i, r in enumerate(references):
        r.query = lambda: torch.cat([torch.zeros(1), torch.full((n - 1,), 1 / (n - 1))])
        assert correlation(explanation.relevance[i][1:], ref.chefer(r)[1:]) > 0.999


@pytest.mark.parametrize("name,family", [("timm_pit", "PiT"), ("timm_pvt_v2", "PVTv2"),
                                         ("hf_pvt_v2", r"PVTv2 \(Hugging Face\)"), ("timm_mvitv2", "MViTv2"),
                                         ("timm_twins_svt", "Twins")])
def test_methods_that_cannot_read_stage_layers_refuse_before_any_forward(name, family):
    assert_refused_before_any_forward(MODELS[name][0](), MODELS[name][1], family)


def test_views_over_one_grid_refuse_pooled_layers_in_one_line():
    """(The views by stage, `stage_attention` and the explorer, show them: tests/test_pooled_views.py.)"""
    from vitx.inspect.views import attention_maps, attention_statistics

    build, size, _ = MODELS["timm_pit"]
    model, x = build(), images_for(size, batch=1)
    for view in (lambda: attention_maps(model, x), lambda: attention_statistics(model, x)):
        with pytest.raises(VitxError, match="grid per stage") as info:
            view()
        assert "\n" not in str(info.value)


def test_an_overlapping_merge_spreads_like_a_tent_and_keeps_a_uniform_row_uniform():
    """A 3x3 stride-2 footprint (PVTv2's patch embedding between stages, PiT's pooling, MViTv2's
    shortcut): an interior token's row is the bilinear tent, 1/4 at the centre, 1/8 on the
    edges, 1/16 at the corners (hand-computed: a source read by c windows gives each 1/c of
    itself); and the mean over the new tokens, pulled back, is uniform over the interior of
    the old grid. Equal weights over the footprint would give 1/9 everywhere and print the
    overlap counts (1, 2, 4) on a uniform row as a checkerboard."""
    from vitx.capture.stages import conv_merge

    merge = conv_merge((9, 9), (5, 5), kernel=3, stride=2, padding=1)
    dense = merge.dense()
    centre = dense[2 * 5 + 2].reshape(9, 9)  # new token (2, 2): old rows / columns 3, 4, 5
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    torch.testing.assert_close(centre, expected)
    torch.testing.assert_close(dense.sum(1), torch.ones(25))  # every row still sums to 1
    uniform = merge.pull(torch.full((1, 25), 1.0 / 25)).reshape(9, 9)
    interior = uniform[2:7, 2:7]  # away from the padded border rows, whose rows renormalise
    assert float(interior.max() - interior.min()) < 1e-7
    torch.testing.assert_close(merge.pull(torch.eye(25)), dense)  # pull is the row product

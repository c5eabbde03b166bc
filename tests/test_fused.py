"""Gradient methods reduced layer by layer in the backward pass (vitx.capture.fused).

The fused path must give what the explicit path gives: the same per-layer reductions (here
against the recorded attention and autograd's gradient of it), the same input gradient
(its dq, dk, dv are hand-written), whatever the chunking; and half precision close to
float32. tests/test_explainers.py checks the methods' results against independent
references on the same path.
"""
import pytest
import torch

import vitx
from vitx.capture import fused
from vitx.capture.recorder import AttentionRecorder
from vitx.registry import find_adapter, get_explainer

from helpers import tiny_sdpa, tiny_timm, tiny_torchvision



def _torchvision():
    model = tiny_torchvision()
    torch.nn.init.normal_(model.heads.head.weight, generator=torch.Generator().manual_seed(0))  # zero-init head:
    return model  # every gradient would be 0


FAMILIES = {"timm": lambda: tiny_timm(), "torchvision": _torchvision, "sdpa": tiny_sdpa}


def _term(layer, attention, gradient):
    return (attention * gradient).sum(dim=1)


def _reduced(model, x, fused_mode):
    adapter = find_adapter(model)
    if not fused_mode:
        adapter = type(adapter)()
        adapter.supports_fused = False  # the explicit path: attention recorded, autograd's gradient
    with AttentionRecorder(model, adapter=adapter, reduce=_term) as recorder:
        pixels = x.clone().requires_grad_(True)
        logits = model(pixels)
        assert recorder.fused == fused_mode
        return recorder.reduced(logits[:, 1].sum())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk", [fused.CHUNK_ELEMENTS, 1, 17 * 17 * 3])
def test_fused_reductions_equal_the_explicit_path_for_any_chunking(family, chunk, monkeypatch):
    model = FAMILIES[family]()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _reduced(model, x, fused_mode=False)
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)  # 1: one image and one head at a time
    got = _reduced(model, x, fused_mode=True)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert a.shape == (3, 17, 17)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert max(float(e.abs().max()) for e in expected) > 1e-3  # not trivially zero


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_backward_gives_the_models_own_input_gradient(family):
    """dq, dk, dv of the hand-written backward: the input gradient through the recorder's
    fused attention equals the plain model's."""
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(plain)[:, 3].sum(), plain)
    with AttentionRecorder(model, reduce=_term) as recorder:
        pixels = x.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(model(pixels)[:, 3].sum(), pixels)
        assert recorder.fused and recorder.num_layers == 3
    torch.testing.assert_close(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)


def test_a_chunk_never_holds_more_than_its_share_of_heads(monkeypatch):
    model = tiny_timm(num_heads=4, embed_dim=32)
    seen = []

    def term(layer, attention, gradient):
        seen.append(tuple(attention.shape))
        return _term(layer, attention, gradient)

    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 2 * 17 * 17)
    with AttentionRecorder(model, reduce=term) as recorder:
        logits = model(torch.randn(2, 3, 32, 32).requires_grad_(True))
        maps = recorder.reduced(logits[:, 0].sum())
    assert set(seen) == {(1, 2, 17, 17)} and len(seen) == 3 * 2 * 2  # layers x images x head pairs
    assert [m.shape for m in maps] == [(2, 17, 17)] * 3


def test_explainers_declare_the_reduction():
    assert get_explainer("grad_rollout").cls.reduces() and get_explainer("chefer2021").cls.reduces()
    assert not get_explainer("rollout").cls.reduces()


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "grad_rollout", "chefer2021"])
def test_bfloat16_model_explains_in_its_dtype_close_to_float32(method):
    model = tiny_timm()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = vitx.explain(model, x, method=method, target=1)
    half = tiny_timm().to(torch.bfloat16)
    got = vitx.explain(half, x.to(torch.bfloat16), method=method, target=1)
    assert next(half.parameters()).dtype == torch.bfloat16
    assert got.maps.dtype == torch.float32 and torch.isfinite(got.maps).all()
    assert (got.maps - reference.maps).abs().max() < 0.1
    for a, b in zip(got.maps.flatten(1), reference.maps.flatten(1)):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.97


def test_bfloat16_reductions_are_stored_in_bfloat16():
    model = tiny_timm().to(torch.bfloat16)
    with AttentionRecorder(model, reduce=_term) as recorder:
        logits = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16).requires_grad_(True))
        maps = recorder.reduced(logits[:, 0].float().sum())
    assert {m.dtype for m in maps} == {torch.bfloat16}


@pytest.mark.parametrize("style", ["F.softmax", "flat (B*heads)"])
def test_hand_written_softmax_is_reduced_in_the_backward_like_the_fused_layers(style):
    """The generic adapter's fused mode: a notebook ViT's own softmax has no SDPA call to
    route, so its probabilities are reduced in the backward pass instead; the reductions, the
    input gradient and grad_rollout's map equal the explicit path's."""
    from test_any_vit import NotebookViT

    torch.manual_seed(0)
    model = NotebookViT(style=style).eval()
    for p in model.parameters():  # sharper attention than random init's near-uniform one
        p.data.mul_(3.0)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    expected = _reduced(model, x, fused_mode=False)
    got = _reduced(model, x, fused_mode=True)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert max(float(e.abs().max()) for e in expected) > 1e-3
    plain = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(plain)[:, 1].sum(), plain)
    with AttentionRecorder(model, reduce=_term) as recorder:
        pixels = x.clone().requires_grad_(True)
        (have,) = torch.autograd.grad(model(pixels)[:, 1].sum(), pixels)
    torch.testing.assert_close(have, want)
    adapter = find_adapter(model)
    explicit = type(adapter)()
    explicit.supports_fused = False
    a = vitx.explain(model, x, method="grad_rollout", target=[1, 2])
    b = vitx.explain(model, x, method="grad_rollout", target=[1, 2], adapter=explicit)
    torch.testing.assert_close(a.relevance, b.relevance, atol=1e-6, rtol=1e-5)


def _rollout(model, x, fused_heads: bool, **options):
    """rollout's map, with attention recorded fused over heads beside the fused kernel, or
    per head on the explicit path (the adapter told it cannot fuse)."""
    from vitx.attribution import api

    adapter = find_adapter(model)
    if not fused_heads:
        adapter = type(adapter)()
        adapter.supports_fused = False
    explainer = get_explainer("rollout").cls(**options)
    seen = {}
    real = api.AttentionRecorder

    class Spy(real):
        def __exit__(self, *exc):
            seen["heads_fused"] = self.heads_fused
            return super().__exit__(*exc)

    api.AttentionRecorder = Spy
    try:
        chunk = api._explain_chunk(model, adapter, explainer, x, target=None, token=None)
    finally:
        api.AttentionRecorder = real
    assert seen["heads_fused"] == fused_heads
    return chunk.relevance


HEAD_FAMILIES = {**FAMILIES, "notebook softmax": lambda: _sharp_notebook()}


def _sharp_notebook():
    from test_any_vit import NotebookViT

    torch.manual_seed(0)
    model = NotebookViT(style="F.softmax").eval()
    for p in model.parameters():
        p.data.mul_(3.0)
    return model


@pytest.mark.parametrize("family", sorted(HEAD_FAMILIES))
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("chunk", [None, 1, 17 * 17 * 3])
def test_rollout_records_heads_fused_and_equals_the_per_head_path(family, head_fusion, chunk, monkeypatch):
    """Rollout reads attention only fused over heads: recorded that way from q and k a chunk
    at a time (per-head probabilities never all alive), it gives the per-head path's map,
    for every head fusion and chunking (1: one image and one head at a time)."""
    model = HEAD_FAMILIES[family]()
    for p in model.parameters():  # sharpen: random init's near-uniform attention hides head fusions
        p.data.mul_(2.0)
    size = (32, 48) if family == "notebook softmax" else (32, 32)
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    if chunk is not None:
        monkeypatch.setattr(fused, "FORWARD_CHUNK_ELEMENTS", chunk)
    expected = _rollout(model, x, fused_heads=False, head_fusion=head_fusion, discard_ratio=0.3)
    got = _rollout(model, x, fused_heads=True, head_fusion=head_fusion, discard_ratio=0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert float(expected.std(dim=1).min()) > 1e-4  # a map with structure, not a constant


def test_head_fused_forward_never_holds_more_than_its_chunk(monkeypatch):
    """In the head-fused forward, each recomputed attention chunk stays within the forward
    budget: here one image's two heads at a time."""
    from vitx.capture import attention_math

    model = tiny_timm(num_heads=4, embed_dim=32)
    seen = []
    real = fused.attention_scores

    def spy(q, k, *args, **kwargs):
        seen.append(tuple(q.shape[:2]))
        return real(q, k, *args, **kwargs)

    monkeypatch.setattr(fused, "attention_scores", spy)
    monkeypatch.setattr(fused, "FORWARD_CHUNK_ELEMENTS", 2 * 17 * 17)
    got = vitx.explain(model, torch.randn(2, 3, 32, 32), method="rollout")
    assert set(seen) == {(1, 2)} and len(seen) == 3 * 2 * 2  # layers x images x head pairs
    assert got.maps.shape == (2, 4, 4) and attention_math is not None

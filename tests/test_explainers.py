"""Explainers against straightforward reference implementations written here.

The references follow the original vit_explain.py shape (per image, full N x N matrices,
the rollout matrix multiplied layer by layer) with its row normalisation fixed
(sum over the last dim, keepdim).
"""
import pytest
import torch

import vitx
from helpers import FAMILIES, images_for, reference_attention, reference_attention_and_grads
from vitx.attribution.ops import discard_lowest, rollout_row, with_residual

FUSE = {"mean": lambda a: a.mean(0), "max": lambda a: a.amax(0), "min": lambda a: a.amin(0)}


def reference_rollout_matrix(layers, discard_ratio, token):
    """layers: per layer (N, N) fused attention of ONE image. Returns the full rollout matrix."""
    n = layers[0].shape[-1]
    result = torch.eye(n)
    for fused in layers:
        fused = fused.clone()
        flat = fused.view(-1)
        _, indices = flat.topk(int(flat.numel() * discard_ratio), largest=False)
        indices = indices[indices != token * n + token]
        flat[indices] = 0
        a = (fused + torch.eye(n)) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def token_index(model_family, token):
    return {"cls": 0, "dist": 1}[token]


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "registers", "torchvision", "custom_sdpa"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_rollout_matches_reference(family, fusion, discard):
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    exp = vitx.explain(model, x, method="rollout", head_fusion=fusion, discard_ratio=discard)
    attentions = reference_attention(model, x)
    for i in range(2):
        matrix = reference_rollout_matrix([FUSE[fusion](a[i]) for a in attentions], discard, token=0)
        torch.testing.assert_close(exp.relevance[i], matrix[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,token", [("deit", "cls"), ("deit_distilled", "dist"), ("custom_sdpa", "cls")])
def test_grad_rollout_matches_reference(family, token):
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    targets = [1, 3]
    exp = vitx.explain(model, x, method="grad_rollout", target=targets, token=token, discard_ratio=0.5)
    t = token_index(family, token)
    for i in range(2):
        attentions, grads = reference_attention_and_grads(model, x[i:i + 1], targets[i])
        fused = [(a[0] * g[0]).mean(0).clamp(min=0) for a, g in zip(attentions, grads)]
        matrix = reference_rollout_matrix(fused, 0.5, token=t)
        torch.testing.assert_close(exp.relevance[i], matrix[t], atol=1e-5, rtol=1e-4)
    assert exp.targets.tolist() == targets


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "torchvision", "gap_no_cls"])
def test_raw_attention_matches_reference(family):
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    attentions = reference_attention(model, x)
    layout = vitx.explain(model, x, method="raw_attention").layout
    query = layout.query()
    for layer, head in [(-1, None), (0, 1), (1, 0)]:
        exp = vitx.explain(model, x, method="raw_attention", layer=layer, head=head)
        expected = attentions[layer].mean(1) if head is None else attentions[layer][:, head]
        torch.testing.assert_close(exp.relevance, query @ expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["raw_attention", "rollout", "grad_rollout", "chefer2021"])
def test_batch_equals_single_images(family, method):
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=4)
    batched = vitx.explain(model, x, method=method)
    singles = [vitx.explain(model, x[i:i + 1], method=method) for i in range(4)]
    torch.testing.assert_close(batched.maps, torch.cat([s.maps for s in singles]), atol=1e-5, rtol=1e-4)
    assert batched.targets.tolist() == [int(s.targets[0]) for s in singles]
    in_pieces = vitx.explain(model, x, method=method, batch_size=3)
    torch.testing.assert_close(batched.maps, in_pieces.maps, atol=1e-5, rtol=1e-4)
    assert batched.maps.shape == (4, size[0] // 8, size[1] // 8)
    peaks = batched.maps.flatten(1).amax(1)
    assert float(batched.maps.min()) >= 0.0
    assert all(abs(p - 1.0) < 1e-6 or p == 0.0 for p in peaks.tolist())  # all-zero only if nothing is relevant


def test_rollout_hand_computed_two_layers():
    """A = [[.5,.25,.25],[0,1,0],[0,0,1]]: (A+I)/2 has row 0 = [.75,.125,.125]; two layers
    give row 0 of M @ M = [.5625, .21875, .21875]."""
    a = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    rollout = vitx.list_methods()["rollout"][0]()
    query = torch.tensor([1.0, 0.0, 0.0])
    relevance = rollout.attribute([rollout.keep(0, a), rollout.keep(1, a)], query)
    torch.testing.assert_close(relevance, torch.tensor([[0.5625, 0.21875, 0.21875]]))


def test_discard_keeps_the_explained_tokens_own_path():
    fused = torch.tensor([[[0.1, 0.9], [0.4, 0.6]]])
    # the two lowest are 0.1 (token 0 -> itself, protected) and 0.4 (dropped)
    out = discard_lowest(fused, 0.5, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([[[0.1, 0.9], [0.0, 0.6]]]))
    out = discard_lowest(fused, 0.5, torch.tensor([0.0, 1.0]))  # token 1: both lowest dropped
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.9], [0.0, 0.6]]]))


def test_rollout_row_equals_full_matrix_product():
    torch.manual_seed(0)
    layers = [with_residual(torch.rand(3, 7, 7).softmax(-1)) for _ in range(4)]
    full = torch.eye(7).expand(3, 7, 7)
    for a in layers:
        full = a @ full
    query = torch.zeros(7)
    query[2] = 1
    torch.testing.assert_close(rollout_row(layers, query), full[:, 2])


def test_known_structure_every_token_looks_at_one_patch():
    """When every token attends only to patch 5, every method must point at patch 5."""
    n, target_token = 1 + 16, 1 + 5
    attention = torch.zeros(2, 3, n, n)
    attention[..., target_token] = 1.0
    query = torch.zeros(n)
    query[0] = 1.0
    methods = vitx.list_methods()
    for name in ("raw_attention", "rollout"):
        explainer = methods[name][0]()
        kept = [explainer.keep(i, attention) for i in range(4)]
        relevance = explainer.attribute(kept, query)
        assert relevance[:, 1:].argmax(-1).tolist() == [5, 5]
    grad_rollout = methods["grad_rollout"][0](discard_ratio=0.0)
    relevance = grad_rollout.attribute([attention] * 4, query, [torch.ones_like(attention)] * 4)
    assert relevance[:, 1:].argmax(-1).tolist() == [5, 5]


@pytest.mark.parametrize("family,token", [("deit", "cls"), ("deit_distilled", "dist"), ("custom_sdpa", "cls")])
def test_chefer2021_matches_reference(family, token):
    """Written as in the paper: R = I; R = R + mean_h((dA * A)^+) @ R, per image."""
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    exp = vitx.explain(model, x, method="chefer2021", target=[0, 4], token=token)
    t = token_index(family, token)
    for i, target in enumerate([0, 4]):
        attentions, grads = reference_attention_and_grads(model, x[i:i + 1], target)
        relevance = torch.eye(attentions[0].shape[-1])
        for a, g in zip(attentions, grads):
            relevance = relevance + (g[0] * a[0]).clamp(min=0).mean(0) @ relevance
        torch.testing.assert_close(exp.relevance[i], relevance[t], atol=1e-5, rtol=1e-4)


def test_rollout_folds_layers_in_forward_order_and_keeps_no_map(monkeypatch):
    """Short sequences: one running product instead of a map per layer (the memory of rollout
    stays that of inference); long ones keep the per-layer maps. Both give the same relevance
    (the reference test above covers the folded path against an independent rollout)."""
    import vitx.attribution.api as api
    from vitx.plugins import rollout

    seen = []
    real = api.Evidence

    def spy(**fields):
        seen.append(fields)
        return real(**fields)

    monkeypatch.setattr(api, "Evidence", spy)
    model, _, size = FAMILIES["vit"]
    model = model()
    x = images_for(size, batch=2)
    folded = vitx.explain(model, x, method="rollout", discard_ratio=0.5, head_fusion="max")
    assert seen[-1]["folded"] is not None and all(a is None for a in seen[-1]["attentions"])
    monkeypatch.setattr(rollout, "FOLD_MAX_TOKENS", 0)
    stored = vitx.explain(model, x, method="rollout", discard_ratio=0.5, head_fusion="max")
    assert seen[-1]["folded"] is None and all(a is not None for a in seen[-1]["attentions"])
    torch.testing.assert_close(folded.relevance, stored.relevance, atol=1e-6, rtol=1e-5)

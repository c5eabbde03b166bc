"""Embedding-similarity targets: the projection measure, and the warning when a gradient method
explains an image against its own embedding with the cosine (a maximum: zero gradient)."""
import warnings

import pytest
import torch
from torch import nn

import vitx
from helpers import images_for, tiny_timm
from vitx.attribution.targets import SimilarityTarget
from vitx.errors import VitxError


class LinearEmbedder(nn.Module):
    """embedding = W . (mean colour of each quadrant): its Jacobian is known in closed form."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 5, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def test_projection_is_one_at_the_reference_and_keeps_its_gradient():
    model = LinearEmbedder()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    reference = model(x).detach()
    projection = SimilarityTarget(reference, measure="projection").score(model(x))
    torch.testing.assert_close(projection, torch.ones(2))
    (gradient,) = torch.autograd.grad(projection.sum(), x)
    # d/dx <W p(x), r> / |r|^2 = p^T (W^T r) / |r|^2, p = quadrant means (each pixel weighs 1/16)
    expected = (model.proj.weight.T @ reference.T).T / reference.pow(2).sum(-1, keepdim=True)  # (2, 12)
    expected = expected.view(2, 3, 2, 2).repeat_interleave(4, -2).repeat_interleave(4, -1) / 16
    torch.testing.assert_close(gradient, expected)
    cosine = SimilarityTarget(reference).score(model(x))
    (flat,) = torch.autograd.grad(cosine.sum(), x)
    assert flat.abs().max() < 1e-5 * gradient.abs().max()  # the cosine is at its maximum: nothing to explain
    shrunk = SimilarityTarget(reference, measure="projection").score(model(0.5 * x))
    torch.testing.assert_close(shrunk, torch.full((2,), 0.5))  # unlike the cosine, it sees the length fall


def test_gradient_methods_warn_on_the_cosine_of_an_image_to_itself():
    model = tiny_timm(num_classes=0)
    x = images_for((32, 32), batch=2)
    with torch.no_grad():
        own = model(x)
    with pytest.warns(UserWarning, match="rounding noise"):
        vitx.explain(model, x, method="chefer2021", target=SimilarityTarget(own))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = vitx.explain(model, x, method="chefer2021", target=SimilarityTarget(own, measure="projection"))
        vitx.explain(model, x, method="rollout", target=SimilarityTarget(own))  # no gradient: nothing to warn about
        vitx.explain(model, x, method="chefer2021", target=SimilarityTarget(own[[1, 0]]))  # another image's
    assert exp.relevance[:, 1:].std(-1).min() > 0


def test_an_unknown_measure_is_one_clear_error():
    with pytest.raises(VitxError, match="unknown similarity measure 'dot'"):
        SimilarityTarget(torch.ones(4), measure="dot")


def test_one_reference_row_per_image_follows_the_chunks():
    """(B, D) references with batch_size < B: each chunk is scored against its own images' rows,
    so chunked equals one batch."""
    model = tiny_timm(num_classes=0)
    x = images_for((32, 32), batch=4)
    with torch.no_grad():
        own = model(x)
    target = SimilarityTarget(own, measure="projection")
    whole = vitx.explain(model, x, method="chefer2021", target=target, batch_size=4)
    chunked = vitx.explain(model, x, method="chefer2021", target=target, batch_size=2)
    torch.testing.assert_close(chunked.relevance, whole.relevance, atol=1e-5, rtol=1e-4)

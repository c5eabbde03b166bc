"""The compatibility matrix: every configuration of tests/compat_rows.py, explained or refused.

Supported rows: every attention method that applies explains the model; rollout, chefer2021
and raw_attention equal a reference computed here from attention obtained another way
(recomputed from each module's weights, see compat_reference) to correlation > 0.999, image by
image; recording leaves the model's output unchanged. Refused rows: each other attention
method fails before any forward with the family's precise error, and recording raw attention
fails with a VitxError, never a raw exception. Hierarchical rows (oracle "windows":
Swin, SwinV2, PiT, PVTv2) are compared with the dense reference of tests/window_reference.py,
gradient rollout included. The docs' "Supported models" page is generated from the rows at build
time (docs/_ext/vitx_reference.py; tests/test_docs.py checks it lists every row).
"""

import pytest
import torch

import vitx
import window_reference
from compat_reference import attention_and_grads, chefer, raw, rollout
from compat_rows import ROWS, refused_methods
from helpers import images_for
from vitx.errors import VitxError

REFERENCES = {"rollout": rollout, "chefer2021": chefer, "raw_attention": raw}
WINDOW_REFERENCES = {"rollout": window_reference.rollout, "chefer2021": window_reference.chefer,
                     "raw_attention": window_reference.raw, "grad_rollout": window_reference.grad_rollout}
TARGETS = [1, 3]


def correlation(a, b):
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_configuration(row):
    model = row.factory()
    x = images_for(row.size, batch=2)
    for method in refused_methods(row):
        with pytest.raises(VitxError, match=row.refusal):
            vitx.explain(model, x, method=method)
    if not row.methods:
        with pytest.raises(VitxError, match=row.refusal.split(":")[0]):
            with vitx.record_attention(model) as rec:
                model(x)
            rec.check_recorded()
        return

    with torch.no_grad():
        expected = model(x)
        with vitx.record_attention(model) as rec:
            logits = model(x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    layout = rec.layout
    assert list(layout.prefix) == list(row.prefix)
    assert layout.num_tokens == rec.attentions[0].shape[-1]
    if row.layers is not None:
        assert rec.num_layers == row.layers
    if row.oracle == "windows":
        return check_windows(model, x, row, layout)
    query = layout.query(row.token)

    references = [attention_and_grads(model, x[i:i + 1], TARGETS[i], row.oracle) for i in range(2)]
    for method in row.methods:
        explanation = vitx.explain(model, x, method=method, target=TARGETS, token=row.token)
        assert explanation.maps.shape == (2, *layout.grid)
        assert torch.isfinite(explanation.relevance).all()
        if method not in REFERENCES:
            continue
        for i in range(2):
            expected = REFERENCES[method](references[i], query, layout.num_tokens)
            got = explanation.relevance[i]
            assert expected.std() > 1e-4, "reference map is flat: the check could not fail"
            assert correlation(got, expected) > 0.999, (method, i)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


def check_windows(model, x, row, layout):
    references = [window_reference.Reference(model, x[i:i + 1], TARGETS[i]) for i in range(2)]
    for method in row.methods:
        explanation = vitx.explain(model, x, method=method, target=TARGETS)
        assert explanation.maps.shape == (2, *layout.grid)
        for i in range(2):
            expected = WINDOW_REFERENCES[method](references[i])[layout.num_prefix:]  # the grid (PiT: not cls)
            assert expected.std() > 1e-3 * expected.abs().mean(), "reference map is flat: the check could not fail"
            assert correlation(explanation.relevance[i][layout.num_prefix:], expected) > 0.999, (method, i)


def test_matrix_is_large_enough():
    assert len(ROWS) >= 30
    assert len({r.name for r in ROWS}) == len(ROWS)

"""RecordingPlan.of: what one explained forward records, from the method's declarations alone
(no model runs here). Each rule against the method that needs it."""
import pytest

from vitx.attribution.plan import RecordingPlan
from vitx.plugin import ATTENTION, ATTENTION_GRAD, MODEL, TOKEN_GRAD, TOKENS, Explainer
from vitx.registry import get_explainer


def plan(method, **options):
    return RecordingPlan.of(get_explainer(method).cls(**options))


def test_rollout_records_attention_without_gradients_fused_and_folded():
    p = plan("rollout")
    assert p.attention and not p.gradients and not p.tokens and p.keep
    assert p.heads == "mean" and p.fold and not p.reduce
    assert plan("rollout", head_fusion="max").heads == "max"


def test_chefer_reduces_in_the_backward_pass_unless_a_gradient_mode_changes_the_backward():
    p = plan("chefer2021")
    assert p.gradients and p.attention_gradients and p.reduce and not p.keep and p.heads is None and not p.fold
    assert not plan("chefer2021", grad_mode="libragrad").reduce  # the fused backward is the plain softmax's


def test_legrad_keeps_the_recorded_graph_live_and_reduces_nothing():
    p = plan("legrad")
    assert p.live and p.gradients and p.attention and p.tokens and not p.reduce and p.runs_model


def test_methods_without_attention_record_tokens_for_the_layout_only():
    p = plan("integrated_gradients")
    assert not p.attention and p.tokens and not p.gradients and p.runs_model and not p.one_pass
    assert plan("gradcam").token_gradients and plan("gradcam").gradients
    assert plan("libragrad").one_pass  # one token set: a model run twice is refused
    assert plan("tokentm").states


@pytest.mark.parametrize("requires,expected", [
    ((ATTENTION,), dict(attention=True, gradients=False, tokens=False)),
    ((ATTENTION, ATTENTION_GRAD), dict(attention=True, gradients=True, reduce=False)),
    ((TOKENS, TOKEN_GRAD), dict(attention=False, gradients=True, tokens=True)),
    ((MODEL,), dict(attention=False, gradients=False, tokens=True, live=False)),
    ((ATTENTION, MODEL), dict(attention=True, gradients=True, live=True)),
])
def test_a_plugins_declarations_alone_decide_the_plan(requires, expected):
    class Declared(Explainer):
        name = "declared"

    Declared.requires = requires
    p = RecordingPlan.of(Declared())
    assert {key: getattr(p, key) for key in expected} == expected

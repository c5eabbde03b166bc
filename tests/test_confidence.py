"""Bootstrap intervals and rank agreement: hand-computed cases and known identities."""
import numpy as np
import pytest

from vitx.errors import VitxError
from vitx.evaluate.confidence import (bootstrap_mean, paired_difference, per_image_auc, rank_agreement,
                                      resample_indices)
from vitx.evaluate.metrics import auc


def test_interval_is_the_percentiles_of_the_resampled_means():
    values = np.array([0.0, 1.0, 2.0, 10.0])
    indices = resample_indices(4, 500, seed=7)
    interval = bootstrap_mean(values, indices=indices)
    means = values[indices].mean(1)
    assert interval.value == pytest.approx(3.25)
    assert interval.low == pytest.approx(np.percentile(means, 2.5))
    assert interval.high == pytest.approx(np.percentile(means, 97.5))
    assert bootstrap_mean(values, 500, seed=7) == interval  # seeded: reproducible


def test_constant_values_have_a_zero_width_interval_and_spread_values_do_not():
    assert bootstrap_mean([0.3] * 20, 200).low == pytest.approx(0.3)
    assert bootstrap_mean([0.3] * 20, 200).high == pytest.approx(0.3)
    spread = bootstrap_mean(np.random.default_rng(0).normal(size=200), 1000)
    assert spread.low < spread.value < spread.high
    assert spread.high - spread.low == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.2)  # the normal theory


def test_paired_difference_sees_a_small_consistent_gap_that_marginal_intervals_hide():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)  # large spread between images
    a, b = base, base + 0.05  # b is worse by 0.05 on every image
    gap = paired_difference(a, b, 500)
    assert gap.value == pytest.approx(-0.05) and gap.excludes(0.0)
    assert bootstrap_mean(a, 500).high > bootstrap_mean(b, 500).low  # the marginal intervals overlap
    with pytest.raises(VitxError):
        paired_difference([1.0, 2.0], [1.0])


def test_per_image_auc_is_metrics_auc_row_by_row():
    curves = np.random.default_rng(1).random((5, 9))
    xs = [round(0.1 * i, 1) for i in range(1, 10)]
    assert per_image_auc(curves, xs) == pytest.approx([auc(row, xs) for row in curves])


def test_rank_agreement_of_same_and_reversed_orders():
    first = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    agreement = rank_agreement({"mean": first, "road": {k: 10 * v for k, v in first.items()},
                                "blur": {k: -v for k, v in first.items()}})
    assert agreement["mean vs. road"] == {"kendall": pytest.approx(1.0), "spearman": pytest.approx(1.0), "methods": 4}
    assert agreement["mean vs. blur"]["kendall"] == pytest.approx(-1.0)
    swapped = dict(first, a=0.25)  # a and b swap: tau = (5 - 1) / 6
    assert rank_agreement({"x": first, "y": swapped})["x vs. y"]["kendall"] == pytest.approx(4 / 6)
    with pytest.raises(VitxError):
        rank_agreement({"x": {"a": 1, "b": 2}, "y": {"a": 1, "b": 2}})


def test_resampled_means_are_streamed_in_bounded_chunks_with_the_same_draws(monkeypatch):
    """`--bootstrap 1000000000` once ran the whole evaluation, then grew to 23 GB and was killed:
    resamples are bounded and drawn a chunk at a time, equal to the one-array draws."""
    from vitx.evaluate import confidence

    values = np.random.default_rng(1).normal(size=37)
    whole = values[confidence.resample_indices(37, 500, seed=3)].mean(axis=1)
    monkeypatch.setattr(confidence, "CHUNK_VALUES", 37 * 7)  # 7 resamples a chunk, the last one partial
    np.testing.assert_array_equal(confidence.resample_means(values, 500, seed=3), whole)
    with pytest.raises(VitxError, match="1 to 100000 resamples"):
        bootstrap_mean(values, resamples=10 ** 9)


def test_a_huge_bootstrap_is_one_error_line_before_any_work(tmp_path):
    """No model is loaded, no image read: the bound is checked first."""
    from helpers import one_error, run

    one_error(run("evaluate", "--dataset", "fashion_mnist", "--methods", "rollout", "--bootstrap", 10 ** 9,
                  "--out", tmp_path), "--bootstrap", "100000")
    assert not list(tmp_path.iterdir())

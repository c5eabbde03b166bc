"""The contract of one `vitx.explain` call: targets, threads, modes, devices."""
import threading

import pytest
import torch

import vitx
from helpers import fingerprint, images_for, tiny_timm


def test_callable_target_equals_the_class_it_scores():
    model, x = tiny_timm(), images_for((32, 32))
    by_index = vitx.explain(model, x, method="grad_rollout", target=3)
    by_callable = vitx.explain(model, x, method="grad_rollout", target=lambda out: out[:, 3])
    torch.testing.assert_close(by_callable.relevance, by_index.relevance)
    assert by_callable.targets is None


def test_callable_target_of_a_difference_is_linear_in_the_gradient():
    """chefer2021 uses d(score)/dA * A: the score a - b gives the gradient of a minus that of b."""
    model, x = tiny_timm(), images_for((32, 32))

    def grads(target):
        with vitx.record_attention(model) as rec:
            out = model(x.clone().requires_grad_(True))
            return rec.gradients(target(out).sum())

    difference = grads(lambda out: out[:, 1] - out[:, 2])
    one, two = grads(lambda out: out[:, 1]), grads(lambda out: out[:, 2])
    for d, a, b in zip(difference, one, two):
        torch.testing.assert_close(d, a - b)


@pytest.mark.parametrize("bad", ["3", 3.7, True, [1, "2", 3], 99999999999999999999])
def test_class_targets_must_be_integers(bad):
    model, x = tiny_timm(), images_for((32, 32))
    with pytest.raises(vitx.VitxError, match="integer class index|out of range"):
        vitx.explain(model, x, method="rollout", target=bad)


def test_a_callable_must_return_one_score_per_image():
    model, x = tiny_timm(), images_for((32, 32))
    with pytest.raises(vitx.VitxError, match=r"\(batch,\) tensor"):
        vitx.explain(model, x, method="grad_rollout", target=lambda out: out)


def test_two_threads_on_one_model_give_the_single_thread_maps_and_restore_it():
    model, x = tiny_timm(), images_for((32, 32), batch=2)
    model.train()  # the user's mode must survive
    before = fingerprint(model)
    expected = {m: vitx.explain(model, x, method=m).relevance for m in ("rollout", "grad_rollout")}
    results, errors = [], []

    def work(method):
        try:
            for _ in range(3):
                results.append((method, vitx.explain(model, x, method=method).relevance))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in ("rollout", "grad_rollout", "rollout", "grad_rollout")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    for method, relevance in results:
        torch.testing.assert_close(relevance, expected[method])
    assert fingerprint(model) == before
    assert model.training


def test_gradient_methods_inside_inference_mode_get_a_hint():
    model, x = tiny_timm(), images_for((32, 32))
    with torch.inference_mode():
        with pytest.raises(vitx.VitxError, match="inference_mode"):
            vitx.explain(model, x, method="grad_rollout")
        frozen = torch.randn(2, 3, 32, 32)
    # rollout needs no gradient and works there; a batch made in inference mode works outside it
    with torch.inference_mode():
        assert vitx.explain(model, x, method="rollout").maps.shape == (3, 4, 4)
    assert vitx.explain(model, frozen, method="grad_rollout").maps.shape == (2, 4, 4)


def test_a_module_is_never_moved_behind_the_users_back():
    model, x = tiny_timm(), images_for((32, 32))
    with pytest.raises(vitx.VitxError, match="model.to"):
        vitx.explain(model, x, method="rollout", device="meta")
    assert vitx.explain(model, x, method="rollout", device="cpu").maps.shape == (3, 4, 4)

"""Batch augmentations of the trainer (`--augment flip|affine|affine-half`): their geometry,
how many images they touch, and that they draw only from torch's (saved, restored) RNG."""
import torch

from vitx.reference_models import augment


def digit_batch(count=64, seed=0):
    """Bright 8x8 squares at random places on a black 28 px background."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(count, 1, 28, 28)
    for image, (row, column) in zip(x, torch.randint(6, 14, (count, 2), generator=generator)):
        image[0, row:row + 8, column:column + 8] = 1.0
    return x


def centroid(x):
    rows = torch.arange(28.0).view(1, 1, 28, 1)
    columns = torch.arange(28.0).view(1, 1, 1, 28)
    mass = x.sum((1, 2, 3))
    return torch.stack([(x * rows).sum((1, 2, 3)) / mass, (x * columns).sum((1, 2, 3)) / mass], 1)


def test_affine_with_no_range_is_the_identity(monkeypatch):
    monkeypatch.setattr(augment, "AFFINE_DEGREES", 0.0)
    monkeypatch.setattr(augment, "AFFINE_SCALE", (1.0, 1.0))
    monkeypatch.setattr(augment, "AFFINE_SHIFT", 0.0)
    x = digit_batch()
    torch.testing.assert_close(augment.random_affine(x), x, atol=1e-5, rtol=0)


def test_affine_moves_each_digit_a_little_and_keeps_it():
    x = digit_batch(256)
    torch.manual_seed(0)
    moved = augment.random_affine(x)
    shift = (centroid(moved) - centroid(x)).norm(dim=1)
    assert (shift > 0.1).float().mean() > 0.9 and shift.max() < 5.0  # +-10 % of 28 px each way, plus rotation
    ratio = moved.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ((ratio > 0.75) & (ratio < 1.3)).all()  # scaled by 0.9-1.1 per side, never cut off
    assert moved.amin() >= 0 and moved.amax() <= 1  # border fill: no value the image did not have


def test_affine_half_keeps_about_half_the_images_as_they_were():
    x = digit_batch(1000, seed=1)
    torch.manual_seed(0)
    out = augment.augment_batch("affine-half", x)
    unchanged = (out == x).flatten(1).all(1).float().mean()
    assert 0.45 < unchanged < 0.55


def test_batch_augmentations_repeat_under_the_same_rng_state():
    x = digit_batch()
    for kind in ("flip", "affine", "affine-half"):
        torch.manual_seed(3)
        first = augment.augment_batch(kind, x)
        torch.manual_seed(3)
        assert torch.equal(first, augment.augment_batch(kind, x)), kind
    assert augment.augment_batch("none", x) is x

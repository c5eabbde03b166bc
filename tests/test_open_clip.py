"""open_clip: the image tower alone and inside the full CLIP model, against a forward written out here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import vitx
from framework_models import (
    OPEN_CLIP_FAMILIES, chefer_reference, correlation, open_clip_model, open_clip_tower_reference, query_vector,
    save_open_clip, write_images,
)
from helpers import fingerprint, images_for
from vitx.inputs import model_inputs
from vitx.cli.main import main

open_clip = pytest.importorskip("open_clip")
PROMPTS = ["a photo of a dog", "a photo of a cat"]


def tower_of(model):
    return getattr(model, "visual", model)


@pytest.mark.parametrize("family", list(OPEN_CLIP_FAMILIES))
def test_recorded_attention_equals_the_written_out_forward(family):
    factory, prefix, size, default_token = OPEN_CLIP_FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    with torch.no_grad():
        expected = model(x)
        pooled, reference = open_clip_tower_reference(tower_of(model), x)
    torch.testing.assert_close(tower_of(model)(x), pooled, atol=1e-5, rtol=1e-5)  # the reference is the tower
    before = fingerprint(model)
    with vitx.record_attention(model) as rec:
        with torch.no_grad():
            output = model(x)
    assert rec.adapter.name == "open_clip" and fingerprint(model) == before
    first = (lambda o: o[0]) if isinstance(output, tuple) else (lambda o: o)
    torch.testing.assert_close(first(output), first(expected), atol=1e-5, rtol=1e-5)
    assert len(rec.attentions) == 2
    for got, want in zip(rec.attentions, reference):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    layout = rec.layout
    assert list(layout.prefix) == prefix and layout.grid == (4, 4) and layout.default_token == default_token


@pytest.mark.parametrize("family", list(OPEN_CLIP_FAMILIES))
def test_rollout_and_chefer_equal_reference(family):
    factory, prefix, size, _ = OPEN_CLIP_FAMILIES[family]
    model = factory()
    x = images_for(size, batch=2)
    if family == "open_clip_full":
        target = vitx.text_targets(model, PROMPTS[:1])[0]

        def score(pooled):
            return F.cosine_similarity(pooled, target.reference[None], dim=-1)
    else:
        target = None

        def score(pooled):
            return (pooled * F.normalize(pooled.detach(), dim=-1)).sum(-1)
    rollout = vitx.explain(model, x, method="rollout")
    chefer = vitx.explain(model, x, method="chefer2021", target=target)
    pooled, attentions = open_clip_tower_reference(tower_of(model), x.clone().requires_grad_(True))
    score(pooled).sum().backward()
    grads = [a.grad for a in attentions]
    query = query_vector(17, 1, 0)
    from framework_models import rollout_reference

    for got, want in ((rollout.relevance, rollout_reference([a.detach() for a in attentions], query)),
                      (chefer.relevance, chefer_reference([a.detach() for a in attentions], grads, query))):
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
        moved = want - query.double()
        assert moved.abs().amax() > 0 and correlation(got.double() - query.double(), moved) > 0.999


def test_text_tower_is_skipped_when_the_forward_encodes_text():
    model = open_clip_model()
    tokens = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    x = images_for((32, 32), batch=2)
    with torch.no_grad():
        expected = model(x, tokens)
    with vitx.record_attention(model) as rec:
        with torch.no_grad():
            output = model(x, tokens)
    assert len(rec.attentions) == 2 and rec.attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(output[1], expected[1])


def test_text_target_score_is_the_similarity_clip_reports():
    model = open_clip_model()
    tokens = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    x = images_for((32, 32), batch=3)
    with torch.no_grad():
        image_features, text_features, scale = model(x, tokens)
    logits = scale * image_features @ text_features.T  # what open_clip reports as logits_per_image
    for j, target in enumerate(vitx.text_targets(model, PROMPTS)):
        exp = vitx.explain(model, x, method="grad_rollout", target=target)
        torch.testing.assert_close(exp.logits[:, 0], logits[:, j] / scale, atol=1e-5, rtol=1e-5)
        assert exp.targets is None and PROMPTS[j] in exp.target_description


def test_image_tower_refuses_a_class_index():
    with pytest.raises(vitx.VitxError, match="embedding dimension"):
        vitx.explain(open_clip_model().visual, images_for((32, 32), batch=1), target=3)


def test_tower_without_text_cannot_take_prompts():
    with pytest.raises(vitx.VitxError, match="full CLIP"):
        vitx.text_targets(open_clip_model().visual, ["a dog"])


def test_cli_text_prompts_on_a_saved_open_clip_folder(tmp_path):
    model = open_clip_model()
    preprocess_cfg = {"size": 32, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "interpolation": "bicubic",
                      "resize_mode": "shortest"}
    folder = tmp_path / "oc"
    save_open_clip(model, folder, preprocess_cfg)
    images = write_images(tmp_path, count=2, size=(48, 40))
    result = CliRunner().invoke(main, ["explain", *map(str, images), "--model", f"open_clip:{folder}",
                                       "--text", "a dog", "--text", "a cat", "--out", str(tmp_path / "out"),
                                       "--save-maps", "--method", "chefer2021", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "similarity to the text 'a dog'" in result.output
    for path in images:
        dog = np.load(tmp_path / "out" / f"{path.stem}_chefer2021_text0-a-dog.npy")
        cat = np.load(tmp_path / "out" / f"{path.stem}_chefer2021_text1-a-cat.npy")
        assert dog.shape == (4, 4) and not np.allclose(dog, cat)
    # preprocessing is open_clip's own transform for this folder
    loaded = vitx.load_model(str(folder), device="cpu")
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    _, pixels, _, _ = model_inputs(loaded, [str(images[0])])
    expected = preprocess(Image.open(images[0]).convert("RGB"))[None]
    assert pixels.shape == expected.shape and (pixels - expected).abs().mean() < 0.02
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)

"""Hugging Face models loaded from save_pretrained folders (offline), their preprocessing, the CLI,
and targets beyond a class: image-text (CLIP, SigLIP) and image-image similarity (DINOv2)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import vitx
from framework_models import (
    IMPLEMENTATIONS, chefer_reference, correlation, hf_attentions_and_grads, hf_clip, hf_model, query_vector,
    save_clip_tokenizer, write_images,
)
from vitx.inputs import model_inputs
from vitx.cli.main import main

transformers = pytest.importorskip("transformers")


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_clip")
    model = hf_clip("sdpa")
    model.save_pretrained(folder)
    save_clip_tokenizer(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_processor_settings_drive_preprocessing_non_square(tmp_path):
    model = hf_model("ViTForImageClassification", "ViTConfig", num_labels=5, image_size=(32, 48))
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 48}, image_mean=(0.1, 0.2, 0.3),
                                               image_std=(0.5, 0.6, 0.7), resample=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = write_images(tmp_path, count=1, size=(60, 70))[0]
    loaded = vitx.load_model(f"hf:{tmp_path}", device="cpu")
    assert type(loaded).__name__ == "ViTForImageClassification"
    _, pixels, views, _ = model_inputs(loaded, [str(image)])
    expected = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert pixels.shape == expected.shape == (1, 3, 32, 48)
    assert (pixels - expected).abs().mean() < 0.02  # the same resize, mean and std (PIL vs torch rounding)
    exp = vitx.explain(loaded, [str(image)], method="rollout")
    assert exp.maps.shape == (1, 4, 6)


def test_cli_explains_a_saved_folder_offline(tmp_path):
    model = hf_model("DeiTForImageClassificationWithTeacher", "DeiTConfig", num_labels=5)
    model.save_pretrained(tmp_path / "deit")
    transformers.DeiTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
                                    ).save_pretrained(tmp_path / "deit")
    images = write_images(tmp_path)
    output = run_cli("explain", *images, "--model", f"hf:{tmp_path / 'deit'}", "--token", "dist",
                     "--out", tmp_path / "out", "--save-maps", "--device", "cpu")
    assert "explaining class" in output and "from the dist token" in output
    for path in images:
        assert (tmp_path / "out" / f"{path.stem}_rollout.png").is_file()
    # a plain folder path works as well
    run_cli("explain", images[0], "--model", tmp_path / "deit", "--out", tmp_path / "out2", "--device", "cpu")
    assert (tmp_path / "out2" / "img0_rollout.png").is_file()


def test_missing_folder_and_hub_offline_give_one_line_errors(tmp_path):
    result = CliRunner().invoke(main, ["explain", str(write_images(tmp_path)[0]), "--model", "hf:./no/such/dir"])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


def test_reference_image_target_on_a_dinov2_folder(tmp_path):
    model = hf_model("Dinov2Model", "Dinov2Config")
    model.save_pretrained(tmp_path / "dino")
    processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                               image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    processor.save_pretrained(tmp_path / "dino")
    images = write_images(tmp_path, count=2)
    output = run_cli("explain", images[0], "--model", f"hf:{tmp_path / 'dino'}", "--reference", images[1],
                     "--out", tmp_path / "out", "--save-maps", "--device", "cpu")
    assert "similarity to img1.png" in output
    assert (tmp_path / "out" / "img0_grad_rollout_reference.png").is_file()
    # the score is the cosine similarity of the two pooled embeddings, computed by hand
    loaded = vitx.load_model(tmp_path / "dino", device="cpu")
    target = vitx.reference_target(loaded, str(images[1]))
    _, pixels, _, _ = model_inputs(loaded, [str(images[0]), str(images[1])])
    with torch.no_grad():
        pooled = loaded(pixels).pooler_output
    expected = F.cosine_similarity(pooled[0], pooled[1], dim=0)
    score = float(output.split("(score ")[1].split(")")[0])
    assert abs(score - float(expected)) < 1e-4
    exp = vitx.explain(loaded, [str(images[0])], method="chefer2021", target=target)
    torch.testing.assert_close(exp.logits[0, 0], expected, atol=1e-5, rtol=1e-5)


def test_cli_text_prompts_on_a_saved_hf_clip_write_one_map_per_prompt(tmp_path, clip_folder):
    images = write_images(tmp_path)
    output = run_cli("explain", *images, "--model", f"hf:{clip_folder}", "--text", "a dog", "--text", "a cat",
                     "--out", tmp_path / "out", "--save-maps", "--device", "cpu")
    maps = {}
    for path in images:
        for i, slug in enumerate(["a-dog", "a-cat"]):
            name = f"{path.stem}_grad_rollout_text{i}-{slug}"
            assert (tmp_path / "out" / f"{name}.png").is_file()
            maps[name] = np.load(tmp_path / "out" / f"{name}.npy")
    assert not np.allclose(maps["img0_grad_rollout_text0-a-dog"], maps["img0_grad_rollout_text1-a-cat"])
    # printed scores equal what CLIP reports for these prompts: logits_per_image / logit_scale
    model = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(clip_folder)
    loaded = vitx.load_model(f"hf:{clip_folder}", device="cpu")
    _, pixels, _, _ = model_inputs(loaded, [str(p) for p in images])
    with torch.no_grad():
        reported = model(**tokenizer(["a dog", "a cat"], padding=True, return_tensors="pt"), pixel_values=pixels)
    expected = (reported.logits_per_image / model.logit_scale.exp()).detach()
    printed = [float(line.split("(score ")[1].split(")")[0]) for line in output.splitlines() if "(score " in line]
    # the CLI explains prompt by prompt: all images for "a dog", then all images for "a cat"
    np.testing.assert_allclose(printed, expected.T.flatten().numpy(), atol=1e-4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_clip_dual_encoder_text_target_chefer_equals_eager_twin(impl, tmp_path):
    from vitx.loaders.huggingface import ImageTextModel

    tokenizer = save_clip_tokenizer(tmp_path)
    inner = hf_clip(impl)
    model = ImageTextModel(inner, tokenizer=tokenizer)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = vitx.text_targets(model, ["a photo of a dog"])[0]
    exp = vitx.explain(model, x, method="chefer2021", target=target)
    assert exp.layout.default_token == "cls" and list(exp.layout.prefix) == ["cls"]
    with torch.no_grad():
        reported = inner(**tokenizer(["a photo of a dog"], return_tensors="pt"), pixel_values=x)
    torch.testing.assert_close(exp.logits[:, 0], reported.logits_per_image[:, 0] / inner.logit_scale.exp(),
                               atol=1e-5, rtol=1e-5)

    def score(output):
        return F.cosine_similarity(output.pooler_output, target.reference[None], dim=-1)

    _, attentions, grads = hf_attentions_and_grads(
        inner, x, score, encode=lambda m, px, **kw: m.get_image_features(pixel_values=px, **kw))
    expected = chefer_reference(attentions, grads, query_vector(17, 1, 0))
    torch.testing.assert_close(exp.relevance, expected.float(), atol=1e-5, rtol=1e-4)
    assert correlation(exp.relevance - query_vector(17, 1, 0), expected - query_vector(17, 1, 0)) > 0.999
    assert inner.config.vision_config._attn_implementation == impl
    assert inner.config.text_config._attn_implementation == impl


def test_a_bare_dual_encoder_gets_a_clear_error():
    with pytest.raises(vitx.VitxError, match="ImageTextModel"):
        vitx.explain(hf_clip("sdpa"), torch.randn(1, 3, 32, 32), method="rollout")


def test_siglip_text_target_equals_the_models_reported_similarity():
    from vitx.loaders.huggingface import ImageTextModel

    inner = hf_clip("sdpa", siglip=True)
    model = ImageTextModel(inner)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([[5, 17, 99, 1], [7, 8, 9, 1]])
    with torch.no_grad():
        text = inner.get_text_features(input_ids=ids).pooler_output
        reported = inner(input_ids=ids, pixel_values=x).logits_per_image
    for j in range(2):
        target = vitx.TextTarget(text[j], f"prompt {j}")
        exp = vitx.explain(model, x, method="grad_rollout", target=target)
        expected = (reported[:, j] - inner.logit_bias) / inner.logit_scale.exp()
        torch.testing.assert_close(exp.logits[:, 0], expected, atol=1e-5, rtol=1e-5)
        assert exp.layout.default_token == "mean" and exp.layout.num_prefix == 0


def test_vitx_imports_and_explains_without_transformers_or_open_clip():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['open_clip'] = None\n"
        "import vitx, torch, timm\n"
        "m = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8, depth=2,"
        " embed_dim=24, num_heads=2, num_classes=3).eval()\n"
        "print(vitx.explain(m, torch.randn(1, 3, 32, 32)).maps.shape)\n"
        "try:\n    vitx.load_model('hf:org/name')\nexcept vitx.VitxError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 4, 4])" in result.stdout and 'pip install "vitx[hf]"' in result.stdout

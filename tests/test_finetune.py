"""Fine-tuning a pretrained ViT (`vitx train --mode finetune`): timm and Hugging Face.

Offline: the "pretrained" networks are tiny random-init ones (a timm ViT built with
keyword arguments, a Hugging Face ViT saved with save_pretrained), fine-tuned for a few
steps on a Fashion-MNIST subset (Debian's dataset-fashion-mnist).
"""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import vitx
from vitx.cli import main
from vitx.reference_models.checkpoint import load_model_file
from vitx.datasets import DEBIAN_FASHION, FASHION_CLASSES, dataset_info, load_split
from vitx.reference_models.finetune import FinetuneConfig, build_finetune, to_model_input
from vitx.reference_models.train import train

pytestmark = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
TIMM = "vit_tiny_patch16_224"
TIMM_KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2)
EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "fashion_mnist").glob("*.png"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random-init Hugging Face ViT and its image processor, saved like a hub model."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=48)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    # mean/std unlike the timm model's 0.5, so a run that normalised with the wrong statistics differs
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def tiny_config(tmp_path, name, model=TIMM, **overrides):
    base = dict(model=model, out=str(tmp_path / name), epochs=3, batch_size=32, lr=2e-3, warmup_epochs=0.2,
                train_limit=320, test_limit=100, download=False, data_dir=str(tmp_path.parent / "data"))
    if model == TIMM:
        base.update(pretrained=False, model_kwargs=TIMM_KWARGS)
    return FinetuneConfig(**{**base, **overrides})


def strip(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


def test_timm_fine_tune_learns_keeps_the_classes_and_explains_from_the_run_folder(tmp_path):
    history = train(tiny_config(tmp_path, "timm"), progress=False)
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    run = tmp_path / "timm"
    meta = json.loads((run / "model.json").read_text())
    assert meta["kind"] == "timm" and meta["architecture"] == TIMM and meta["kwargs"]["num_classes"] == 10
    assert meta["data_config"]["input_size"] == [3, 32, 32] and meta["history"] == history

    model = vitx.load_model(str(run), device="cpu")  # the run folder, offline, from the JSON alone
    assert model.head.out_features == 10 and model.class_names == list(FASHION_CLASSES)
    state = load_model_file(run / "model.safetensors").state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    for method in vitx.list_methods():
        exp = vitx.explain(model, [str(f) for f in EXAMPLES], method=method)
        assert exp.maps.shape == (len(EXAMPLES), 4, 4) and exp.views[0].shape == (32, 32, 3)
        assert exp.predictions[0][0].name in FASHION_CLASSES

    out = tmp_path / "maps"
    result = CliRunner().invoke(main, ["explain", str(EXAMPLES[0]), "--model", str(run), "--device", "cpu",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / f"{EXAMPLES[0].stem}_rollout.png").is_file()
    assert any(name in result.output for name in FASHION_CLASSES)

    result = CliRunner().invoke(main, ["inspect", *map(str, EXAMPLES[:2]), "-m", str(run), "-m", "fashion_vit",
                                       "--methods", "rollout", "--show", "1", "--device", "cpu",
                                       "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<td>timm</td><td>VisionTransformer</td>" in page  # named after the run folder
    for model in ("timm", "fashion-vit"):  # both models' figures, side by side
        assert f"{model}-attention-cls.png" in page and f"{model}-positions.png" in page


def test_hf_fine_tune_starts_from_the_saved_weights_and_learns(hf_folder, tmp_path):
    from transformers import ViTForImageClassification

    saved = ViTForImageClassification.from_pretrained(hf_folder).state_dict()
    wrapper, meta = build_finetune(tiny_config(tmp_path, "x", model=str(hf_folder)))
    built = wrapper.state_dict()
    encoder = [k for k in saved if not k.startswith("classifier")]
    assert encoder and all(torch.equal(built[k], saved[k]) for k in encoder)  # pretrained encoder kept
    assert built["classifier.weight"].shape == (10, 24) and saved["classifier.weight"].shape == (2, 24)
    random, _ = build_finetune(tiny_config(tmp_path, "y", model=str(hf_folder), pretrained=False))
    query = "vit.layers.0.attention.q_proj.weight"
    assert query in encoder and not torch.equal(random.state_dict()[query], saved[query])
    assert meta["data_config"]["mean"] == pytest.approx([0.4, 0.45, 0.5])

    history = train(tiny_config(tmp_path, "hf", model=str(hf_folder)), progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    model = vitx.load_model(str(tmp_path / "hf"), device="cpu")
    assert model.classifier.out_features == 10 and model.config.id2label[0] == "T-shirt/top"
    assert model.class_names == list(FASHION_CLASSES)
    # the saved preprocessing is read back (the processor's mean/std), not the ViT family's 0.5 defaults
    from vitx.registry import data_config
    assert data_config(model)["mean"] == pytest.approx([0.4, 0.45, 0.5])
    assert data_config(model)["std"] == pytest.approx([0.2, 0.25, 0.3])
    exp = vitx.explain(model, [str(f) for f in EXAMPLES[:2]], method="rollout")  # through the generic SDPA capture
    assert exp.maps.shape == (2, 4, 4) and exp.predictions[0][0].name in FASHION_CLASSES


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_resume_after_interrupt_reproduces_the_uninterrupted_run(kind, hf_folder, tmp_path, interrupted_in_second_epoch):
    model = TIMM if kind == "timm" else str(hf_folder)
    settings = dict(model=model, ema=0.9, augment="default", epochs=2, train_limit=192)
    straight = train(tiny_config(tmp_path, "straight", **settings), progress=False)

    with interrupted_in_second_epoch():
        assert len(train(tiny_config(tmp_path, "resumed", **settings), progress=False)) == 1
    resumed = train(tiny_config(tmp_path, "resumed", **settings), resume=True, progress=False)
    assert strip(resumed) == strip(straight)
    a = load_model_file(tmp_path / "straight" / "model.safetensors").state_dict()
    b = load_model_file(tmp_path / "resumed" / "model.safetensors").state_dict()
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_layer_wise_learning_rates_after_the_warmup(hf_folder, tmp_path):
    """Head at lr, block i of L at lr * decay^(L + 1 - i), embeddings at lr * decay^(L + 1)."""
    from timm.scheduler import CosineLRScheduler

    lr, decay, depth = 1e-3, 0.5, 2
    for model, head, block0, embed in [(TIMM, "head.weight", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"),
                                       (str(hf_folder), "classifier.weight", "vit.layers.0.attention.q_proj.weight",
                                        "vit.embeddings.patch_embeddings.projection.weight")]:
        wrapper, _ = build_finetune(tiny_config(tmp_path, "x", model=model, layer_decay=decay))
        groups = wrapper.param_groups(0.05)
        optimizer = torch.optim.AdamW(groups, lr=lr)
        CosineLRScheduler(optimizer, t_initial=100, warmup_t=0, t_in_epochs=False).step_update(0)
        params = dict(wrapper.model.named_parameters())
        grouped = [p for g in optimizer.param_groups for p in g["params"]]
        assert len(grouped) == len(params) and {id(p) for p in grouped} == {id(p) for p in params.values()}

        def group_of(name):
            return next(g for g in optimizer.param_groups if any(p is params[name] for p in g["params"]))

        assert group_of(head)["lr"] == pytest.approx(lr)
        assert group_of(block0)["lr"] == pytest.approx(lr * decay ** depth)
        assert group_of(embed)["lr"] == pytest.approx(lr * decay ** (depth + 1))
        assert group_of(block0)["weight_decay"] == 0.05 and group_of(head.replace("weight", "bias"))["weight_decay"] == 0


def test_training_input_is_what_the_models_own_preprocessing_gives(hf_folder, tmp_path):
    """A dataset batch (grey, 28 px, Fashion-MNIST statistics) becomes exactly what the
    network's own preprocessing (the HF image processor; timm's eval transform, which vitx
    explain uses) makes of the same picture as an RGB image: 3 channels, 32 px, its mean/std."""
    from timm.data import create_transform
    from transformers import AutoImageProcessor

    info = dataset_info("fashion_mnist")
    split = load_split("fashion_mnist", False, tmp_path.parent / "data", False)
    batch = torch.stack([split[i][0] for i in range(4)])
    split.transform = None
    pictures = [split[i][0].convert("RGB") for i in range(4)]
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)

    hf, hf_meta = build_finetune(tiny_config(tmp_path, "x", model=str(hf_folder)))
    expected = AutoImageProcessor.from_pretrained(hf_folder)(images=pictures, return_tensors="pt")["pixel_values"]
    got = to_model_input(batch, mean, std, hf_meta["data_config"])
    assert got.shape == expected.shape == (4, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    timm_model, timm_meta = build_finetune(tiny_config(tmp_path, "y"))
    transform = create_transform(**{k: v for k, v in timm_meta["data_config"].items()})
    expected = torch.stack([transform(p) for p in pictures])
    torch.testing.assert_close(to_model_input(batch, mean, std, timm_meta["data_config"]), expected, atol=1e-5, rtol=0)


def test_a_pretrained_timm_checkpoint_file_gives_the_encoder_and_a_new_head(tmp_path):
    import timm

    torch.manual_seed(1)
    pretrained = timm.create_model(TIMM, pretrained=False, **TIMM_KWARGS)  # 1000-class head, like ImageNet weights
    save_file(pretrained.state_dict(), str(tmp_path / "in1k.safetensors"))
    wrapper, meta = build_finetune(tiny_config(tmp_path, "x", pretrained=True, checkpoint=str(tmp_path / "in1k.safetensors")))
    built, source = wrapper.state_dict(), pretrained.state_dict()
    assert all(torch.equal(built[k], source[k]) for k in source if not k.startswith("head"))
    assert built["head.weight"].shape == (10, 24) and meta["source"]["checkpoint"].endswith("in1k.safetensors")

    with pytest.raises(vitx.VitxError, match="checkpoint not found"):
        build_finetune(tiny_config(tmp_path, "x", checkpoint=str(tmp_path / "missing.safetensors")))
    torch.save({"model": pretrained}, tmp_path / "pickled.pth")
    with pytest.raises(vitx.VitxError, match="refusing to load"):
        build_finetune(tiny_config(tmp_path, "x", checkpoint=str(tmp_path / "pickled.pth")))


def _invoke(*args):
    return CliRunner().invoke(main, ["train", *args])


def test_train_help_documents_every_option():
    from vitx.reference_models.cli import train_command

    result = _invoke("--mode", "finetune", "--help")
    assert result.exit_code == 0
    for param in train_command.params:
        assert param.help, f"--{param.name} has no help text"
        assert param.opts[0] in result.output
    for flag in ("--model", "--checkpoint", "--no-pretrained", "--model-arg", "--layer-decay"):
        assert flag in result.output


def test_train_cli_fine_tunes_and_reports_clear_errors(hf_folder, tmp_path):
    data = ["--no-download", "--data-dir", str(tmp_path.parent / "data"), "--train-limit", "64", "--test-limit", "32",
            "--batch-size", "32", "--epochs", "1"]
    run = tmp_path / "cli"
    result = _invoke("--mode", "finetune", "--model", str(hf_folder), "--out", str(run), *data)
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "model.json").read_text())
    assert meta["kind"] == "hf" and meta["train"]["lr"] == 1e-4 and meta["train"]["layer_decay"] == 0.75

    result = _invoke("--mode", "finetune", "--model", TIMM, "--no-pretrained", "--out", str(tmp_path / "t"), *data,
                     "--model-arg", "img_size=32", "--model-arg", "patch_size=8", "--model-arg", "depth=1",
                     "--model-arg", "embed_dim=24", "--model-arg", "num_heads=2", "--lr", "3e-4")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "t" / "model.json").read_text())
    assert meta["kwargs"] == dict(TIMM_KWARGS, depth=1, num_classes=10) and meta["train"]["lr"] == 3e-4

    cases = [
        (["--mode", "finetune"], "--mode finetune needs --model"),
        (["--mode", "baseline", "--model-arg", "depth=2"], "--model-arg: only for --mode finetune"),
        (["--mode", "finetune", "--model", "vit_tiny_patch16_2244"], "unknown model 'vit_tiny_patch16_2244'"),
        (["--mode", "finetune", "--model", TIMM, "--model-arg", "depth"], "--model-arg expects key=value"),
        (["--mode", "finetune", "--model", TIMM, "--checkpoint", str(tmp_path / "none.pth")], "checkpoint not found"),
        (["--mode", "finetune", "--model", str(tmp_path)], "a folder, but no config.json in it"),
    ]
    for args, message in cases:
        result = _invoke(*args, "--out", str(tmp_path / "err"), *data)
        assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, \
            (args, result.output)
        assert len(result.output.strip().splitlines()) == 1


def test_study_adds_the_fine_tuned_model_as_a_fourth_student(hf_folder, tmp_path, monkeypatch):
    from vitx.reference_models import study

    monkeypatch.setitem(study.PRESETS, "smoke", dict(epochs=1, train_limit=128, test_limit=64, batch_size=32,
                                                     teacher_epochs=1, vit=dict(dim=16, depth=1, heads=2, patch_size=7)))
    monkeypatch.setitem(study.FINETUNE_PRESETS, "smoke", dict(epochs=2, train_limit=128, batch_size=32, lr=2e-3))
    results = study.run_study(out=str(tmp_path / "study"), data_dir=str(tmp_path.parent / "data"), download=False,
                              num_images=2, statistics_images=8, progress=False, with_finetune=str(hf_folder))
    assert list(results) == ["teacher", "baseline", "kd", "deit", "finetune"]
    history = json.loads((tmp_path / "study" / "finetune" / "history.json").read_text())
    assert results["finetune"]["test_accuracy"] == history[-1]["test_accuracy"] and len(history) == 2
    table = (tmp_path / "study" / "results.md").read_text()
    assert f"| finetune | {results['finetune']['test_accuracy']:.4f} | 2 |" in table
    columns = json.loads((tmp_path / "study" / "results.json").read_text())["attention_figure_columns"]
    assert columns[-2:] == ["finetune rollout", "finetune grad"]  # the fine-tuned model's columns
    page = (tmp_path / "study" / "report" / "report.html").read_text()
    for figure_name in ("finetune-attention-cls.png", "finetune-methods-0.png", "finetune-curves.png"):
        assert figure_name in page
    rows = [line for line in page.splitlines() if "<td>finetune</td>" in line]
    assert len(rows) >= 1 + 2  # overview row and one statistics row per layer

    # a finished run is used as it is; one on another dataset is refused
    again = study.run_study(out=str(tmp_path / "study"), data_dir=str(tmp_path.parent / "data"), download=False,
                            num_images=2, statistics_images=8, progress=False,
                            with_finetune=str(tmp_path / "study" / "finetune"))
    assert again == results
    meta_path = tmp_path / "study" / "finetune" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, dataset="mnist")))
    with pytest.raises(vitx.VitxError, match="fine-tuned on mnist, not on fashion_mnist"):
        study.run_study(out=str(tmp_path / "study"), data_dir=str(tmp_path.parent / "data"), download=False,
                        num_images=2, statistics_images=8, progress=False,
                        with_finetune=str(tmp_path / "study" / "finetune"))
    with pytest.raises(vitx.VitxError, match="unknown model 'vit_tiny_patch16_2244'"):
        study.run_study(out=str(tmp_path / "other"), download=False, with_finetune="vit_tiny_patch16_2244")
    assert not (tmp_path / "other").exists()  # refused before any training


def test_study_help_offers_the_fine_tuned_column():
    result = CliRunner().invoke(main, ["study", "--help"])
    assert result.exit_code == 0 and "--with-finetune MODEL" in result.output and "--finetune-checkpoint" in result.output

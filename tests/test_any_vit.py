"""Any ViT, part 1: hand-written softmax ViTs, Linear patchify, grid inference and overrides,
wrapped models. Every check compares with attention computed independently of vitx."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitx
from helpers import fingerprint, images_for, tiny_timm


class SoftmaxAttention(nn.Module):
    """Notebook-style attention: softmax(q @ k^T * scale) in one of four spellings."""

    def __init__(self, dim, heads, style):
        super().__init__()
        self.heads, self.style = heads, style
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.seen = None  # the test's own copy of the attention, kept outside vitx

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (d // h) ** -0.5
        if self.style == "F.softmax":
            attn = F.softmax(scores, dim=-1)
        elif self.style == "torch.softmax":
            attn = torch.softmax(scores, -1)
        elif self.style == "Tensor.softmax":
            attn = scores.softmax(dim=-1)
        elif self.style == "nn.Softmax":
            attn = self.softmax(scores)
        else:  # (B*heads, N, N), the layout of many single-matrix implementations
            attn = torch.softmax(scores.reshape(b * h, n, n), dim=-1).reshape(b, h, n, n)
        self.seen = attn.detach()
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim, heads, style):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SoftmaxAttention(dim, heads, style)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NotebookViT(nn.Module):
    """A from-scratch ViT: Linear patchify (no Conv2d), cls token, a channel softmax (SE-style
    gate) and a classifier softmax that must not be mistaken for token attention."""

    def __init__(self, style="F.softmax", patch=8, dim=24, heads=2, depth=3, classes=5, grid=(4, 6)):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + grid[0] * grid[1], dim) * 0.5)
        self.blocks = nn.ModuleList(Block(dim, heads, style) for _ in range(depth))
        self.gate = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            for block in self.blocks:
                block.attn.qkv.weight.mul_(6.0)

    def forward(self, x):
        b, c, height, width = x.shape
        p = self.patch
        patches = x.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
        tokens = torch.cat([self.cls.expand(b, -1, -1), self.embed(patches)], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        cls = tokens[:, 0]
        cls = cls * F.softmax(self.gate(cls), dim=-1)  # channel gate: a softmax that is not attention
        return F.log_softmax(self.head(cls), dim=-1) + torch.softmax(self.head(cls), dim=-1) * 0  # classifier softmaxes


STYLES = ["F.softmax", "torch.softmax", "Tensor.softmax", "nn.Softmax", "flat (B*heads)"]


def own_rollout(model, x):
    """Rollout of the cls row from the attention the model itself kept (mean heads, + I)."""
    with torch.no_grad():
        model(x)
    row = torch.zeros(x.shape[0], 1, model.pos.shape[1])
    row[:, 0, 0] = 1
    for block in reversed(model.blocks):
        a = block.attn.seen.mean(1)
        a = (a + torch.eye(a.shape[-1])) / 2
        row = row @ (a / a.sum(-1, keepdim=True))
    return row[:, 0]


@pytest.mark.parametrize("style", STYLES)
def test_hand_written_softmax_vits_are_recorded_and_explained(style):
    torch.manual_seed(0)
    model = NotebookViT(style).eval()
    x = images_for((32, 48), batch=2)  # non-square: a transposed grid would show
    with vitx.record_attention(model) as rec:
        model(x)
    assert len(rec.attentions) == 3  # the channel gate and classifier softmaxes are not attention
    for recorded, block in zip(rec.attentions, model.blocks):
        torch.testing.assert_close(recorded, block.attn.seen)
    assert rec.layout.grid == (4, 6) and list(rec.layout.prefix) == ["cls"]
    exp = vitx.explain(model, x, method="rollout")
    torch.testing.assert_close(exp.relevance, own_rollout(model, x), atol=1e-5, rtol=1e-4)
    assert exp.maps.shape == (2, 4, 6)
    for method in ("grad_rollout", "chefer2021", "raw_attention"):
        assert vitx.explain(model, x, method=method).maps.shape == (2, 4, 6)


def test_grid_override_and_a_bad_grid():
    torch.manual_seed(0)
    model = NotebookViT().eval()
    x = images_for((32, 48), batch=1)
    inferred = vitx.explain(model, x, method="rollout")
    forced = vitx.explain(model, x, method="rollout", layout="4x6")
    torch.testing.assert_close(forced.maps, inferred.maps)
    with pytest.raises(vitx.VitxError, match="fewer than the 5x6 patch grid"):
        vitx.explain(model, x, method="rollout", layout=(5, 6))
    with pytest.raises(vitx.VitxError, match="HxW"):
        vitx.explain(model, x, method="rollout", layout="four by six")


def test_pointwise_conv_is_not_a_patch_embedding():
    """A 1x1 stride-1 conv before a Linear patchify once produced 'a 32x48 patch grid'."""

    class WithPointwise(NotebookViT):
        def __init__(self):
            super().__init__()
            self.mix = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return super().forward(self.mix(x))

    torch.manual_seed(0)
    model = WithPointwise().eval()
    with vitx.record_attention(model) as rec:
        model(images_for((32, 48), batch=1))
    assert rec.layout.grid == (4, 6)


def wrapped_models():
    base = tiny_timm("deit_tiny_patch16_224")
    return base, {
        "DataParallel": nn.DataParallel(base),
        "compiled": torch.compile(base, backend="eager"),
        "DataParallel(compiled)": nn.DataParallel(torch.compile(base, backend="eager")),
    }


@pytest.mark.parametrize("kind", ["DataParallel", "compiled", "DataParallel(compiled)"])
def test_wrapped_models_are_explained_like_the_model_inside(kind):
    base, wrapped = wrapped_models()
    x = images_for((32, 32), batch=2)
    expected = vitx.explain(base, x, method="grad_rollout")
    before = fingerprint(base)
    got = vitx.explain(wrapped[kind], x, method="grad_rollout")
    torch.testing.assert_close(got.relevance, expected.relevance)
    assert fingerprint(base) == before
    from vitx.registry import data_config

    # the wrapped DeiT keeps its own preprocessing (crop 0.9 from timm's pretrained config)
    assert data_config(wrapped[kind]) == data_config(base) and data_config(base)["crop_pct"] == 0.9


class Normalise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def test_a_normalising_wrapper_is_not_normalised_twice():
    from PIL import Image

    base = tiny_timm("vit_tiny_patch16_224")
    from vitx.registry import data_config

    config = data_config(base)
    wrapper = nn.Sequential(Normalise(config["mean"], config["std"]), base).eval()
    picture = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    direct = vitx.explain(base, [picture], method="rollout")
    through_wrapper = vitx.explain(wrapper, [picture], method="rollout")
    torch.testing.assert_close(through_wrapper.relevance, direct.relevance, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(through_wrapper.logits, direct.logits, atol=1e-5, rtol=1e-4)
    assert list(through_wrapper.layout.prefix) == ["cls"]


def test_cli_grid_override(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from vitx.cli import main

    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(tmp_path / "a.png")
    runner = CliRunner()
    plain = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--out", str(tmp_path / "p"), "--save-maps"])
    forced = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--grid", "7x7", "--out", str(tmp_path / "f"),
                                  "--save-maps"])
    assert plain.exit_code == 0 and forced.exit_code == 0, plain.output + forced.output
    import numpy as np

    np.testing.assert_array_equal(np.load(tmp_path / "p" / "a_rollout.npy"), np.load(tmp_path / "f" / "a_rollout.npy"))
    wrong = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--grid", "8x8", "--out", str(tmp_path / "w")])
    assert wrong.exit_code == 1 and "Error:" in wrong.output and "8x8" in wrong.output


def test_naflexvit_registers_are_named_and_the_mean_token_is_explained():
    """NaFlexViT: Linear patchify, 4 register tokens, no class token, average pooling."""
    import timm

    from helpers import reference_attention

    torch.manual_seed(0)
    model = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=24, num_heads=2, num_classes=5).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(6.0)
    x = images_for((32, 48), batch=2)
    with vitx.record_attention(model) as rec:
        model(x)
    assert rec.adapter.name == "timm_naflex"
    assert list(rec.layout.prefix) == ["reg0", "reg1", "reg2", "reg3"] and rec.layout.grid == (4, 6)
    assert rec.layout.default_token == "mean"
    for recorded, expected in zip(rec.attentions, reference_attention(model, x)):
        torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5)


def test_a_normalising_wrapper_answers_every_adapter_question_through_its_vit():
    """The wrapper adapter delegates generically: token sites and the head too (LeGrad and
    Grad-CAM through a wrapper equal them on the bare ViT fed normalised pixels)."""
    base = tiny_timm("vit_tiny_patch16_224")
    from vitx.registry import data_config

    config = data_config(base)
    wrapper = nn.Sequential(Normalise(config["mean"], config["std"]), base).eval()
    raw = torch.rand(2, 3, 32, 32)
    normalised = (raw - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    for method in ("legrad", "gradcam"):
        through = vitx.explain(wrapper, raw, method=method, target=1)
        direct = vitx.explain(base, normalised, method=method, target=1)
        torch.testing.assert_close(through.relevance, direct.relevance, atol=1e-5, rtol=1e-4)
        assert through.relevance.abs().max() > 0


def test_a_grid_other_than_the_patch_embeddings_is_refused(tmp_path):
    """`--grid 3x3` on the bundled 7x7 model once gave exit 0 and a map on tokens 41..49 (the
    first 41 taken for 'extra tokens'); a grid the patch embedding contradicts, or one that
    leaves more leading tokens than any ViT has, is one error line."""
    from PIL import Image

    from helpers import one_error, run

    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(tmp_path / "a.png")
    one_error(run("explain", tmp_path / "a.png", "--grid", "3x3", "--out", tmp_path / "o"), "3x3", "7x7")
    one_error(run("explain", tmp_path / "a.png", "--grid", "3x3", "--method", "integrated_gradients",
                  "--out", tmp_path / "o"), "3x3", "7x7")
    assert not list((tmp_path / "o").glob("*.png"))
    model = NotebookViT().eval()  # a Linear patchify: no patch embedding to read the grid from
    x = images_for((32, 48), batch=1)
    with pytest.raises(vitx.VitxError, match="leaves 23 of the 25 tokens"):
        vitx.explain(model, x, method="rollout", layout=(1, 2))


class Standardise(nn.Module):
    """A normaliser by another name: buffers `mu` / `sigma`, no `Normalize` in its class name."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mu) / self.sigma


class Clamp(nn.Module):
    def forward(self, x):
        return x.clamp(0, 1)


def test_a_normaliser_in_front_is_found_by_what_it_does_not_by_its_name():
    """Buffers named mu / sigma once made vitx normalise, then the model normalise again (logits
    off by 0.68), silently. The front is probed: a per-channel affine map is a normaliser, the
    identity is none, anything else is refused with how to declare the preprocessing."""
    from vitx.registry import data_config

    base = tiny_timm("vit_tiny_patch16_224")
    config = data_config(base)
    picture = (torch.rand(40, 40, 3) * 255).byte().numpy()
    direct = vitx.explain(base, [picture], method="rollout")
    for front in (Standardise(config["mean"], config["std"]), nn.Identity()):
        through = vitx.explain(nn.Sequential(front, base).eval(), [picture], method="rollout")
        torch.testing.assert_close(through.logits, direct.logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(through.relevance, direct.relevance, atol=1e-5, rtol=1e-4)
    clamped = nn.Sequential(Clamp(), base).eval()
    with pytest.raises(vitx.VitxError, match=r"in front of the ViT \(Clamp\).*remember_preprocessing") as info:
        vitx.explain(clamped, [picture], method="rollout")
    assert "\n" not in str(info.value)
    vitx.remember_preprocessing(clamped, {**config, "mean": (0.0,) * 3, "std": (1.0,) * 3})
    assert torch.isfinite(vitx.explain(clamped, [picture], method="rollout").maps).all()

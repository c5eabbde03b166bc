"""Tiny random-init Hugging Face transformers and open_clip models, and their eager twins.

Rows for the compatibility matrix: FRAMEWORK_FAMILIES maps a name to
(factory(attn_implementation) -> model, prefix token names, input size, default token).
Nothing here uses vitx: these are the models vitx is tested on, and the references.
"""
import torch

IMPLEMENTATIONS = ("eager", "sdpa")
TINY_HF = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=48)
TEXT_HF = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def sharpen(model, factor=6.0):
    """Random init gives near-uniform attention; larger query/key weights make maps distinct."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight", "in_proj_weight")):
                p.mul_(factor)
    return model


def hf_model(cls_name, config_name, impl="sdpa", seed=0, **extra):
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**{**TINY_HF, **extra}, attn_implementation=impl)
    return sharpen(getattr(transformers, cls_name)(config).eval())


def hf_clip(impl="sdpa", seed=0, siglip=False):
    import transformers

    torch.manual_seed(seed)
    prefix = "Siglip" if siglip else "CLIP"
    text = dict(TEXT_HF, vocab_size=49408, max_position_embeddings=77)
    if not siglip:
        text.update(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=dict(TINY_HF), text_config=text, **({} if siglip else {"projection_dim": 16}))
    config._attn_implementation = impl
    return sharpen(getattr(transformers, f"{prefix}Model")(config).eval())


def open_clip_model(seed=0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPEN_CLIP_CFG).eval()
    return sharpen(model)


def _hf(cls_name, config_name, **extra):
    return lambda impl="sdpa": hf_model(cls_name, config_name, impl, **extra)


# name -> (factory(attn_implementation), prefix tokens, input size, default token)
HF_FAMILIES = {
    "hf_vit": (_hf("ViTForImageClassification", "ViTConfig", num_labels=5), ["cls"], (32, 32), "cls"),
    "hf_vit_nonsquare": (_hf("ViTForImageClassification", "ViTConfig", num_labels=5, image_size=(32, 48)),
                         ["cls"], (32, 48), "cls"),
    "hf_deit_teacher": (_hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", num_labels=5),
                        ["cls", "dist"], (32, 32), "cls"),
    "hf_dinov2": (_hf("Dinov2Model", "Dinov2Config"), ["cls"], (32, 32), "cls"),
    "hf_dinov2_registers": (_hf("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", num_register_tokens=4),
                            ["cls", "reg0", "reg1", "reg2", "reg3"], (32, 32), "cls"),
    "hf_beit_mean_pool": (_hf("BeitForImageClassification", "BeitConfig", num_labels=5, use_mean_pooling=True,
                              use_relative_position_bias=True), ["cls"], (32, 32), "mean"),
    "hf_clip_vision": (_hf("CLIPVisionModel", "CLIPVisionConfig"), ["cls"], (32, 32), "cls"),
    "hf_siglip_vision": (_hf("SiglipVisionModel", "SiglipVisionConfig"), [], (32, 32), "mean"),
}
OPEN_CLIP_FAMILIES = {
    "open_clip_tower": (lambda impl=None: open_clip_model().visual, ["cls"], (32, 32), "cls"),
    "open_clip_full": (lambda impl=None: open_clip_model(), ["cls"], (32, 32), "cls"),
}


def _image_text(impl, siglip=False):
    from vitx.loaders.huggingface import ImageTextModel  # the model vitx builds for a CLIP folder

    return ImageTextModel(hf_clip(impl, siglip=siglip))


# Rows for the shared compatibility matrix, in the shape of helpers.FAMILIES plus the default token:
# (name, factory() -> model, prefix token names, input size, default token). Each runs with vitx's
# own recorder; the references (eager twin, written-out open_clip tower) live above.
MATRIX_ROWS = [
    (f"{name}_{impl}", (lambda f=factory, i=impl: f(i)), prefix, size, token)
    for name, (factory, prefix, size, token) in HF_FAMILIES.items() for impl in IMPLEMENTATIONS
] + [
    (f"hf_clip_dual_{impl}", (lambda i=impl: _image_text(i)), ["cls"], (32, 32), "cls") for impl in IMPLEMENTATIONS
] + [
    (f"hf_siglip_dual_{impl}", (lambda i=impl: _image_text(i, True)), [], (32, 32), "mean") for impl in IMPLEMENTATIONS
] + [(name, factory, prefix, size, token) for name, (factory, prefix, size, token) in OPEN_CLIP_FAMILIES.items()]


def eager_twin(model):
    """A copy of an HF model with the same weights, running transformers' own eager attention."""
    import copy

    twin = copy.deepcopy(model)
    twin.set_attn_implementation("eager")
    return twin


def hf_attentions_and_grads(model, x, score_fn, encode=None):
    """(output, attentions, d score.sum() / d attention) from HF's own output_attentions=True of
    an eager twin; `encode(twin, x, **kw)` runs the twin (default: twin(x, **kw))."""
    twin = eager_twin(model)
    encode = encode or (lambda m, pixels, **kw: m(pixels, **kw))
    output = encode(twin, x.clone().requires_grad_(True), output_attentions=True)
    attentions = list(output.attentions)
    for a in attentions:
        a.retain_grad()
    score_fn(output).sum().backward()
    return output, [a.detach() for a in attentions], [a.grad.detach() for a in attentions]


def query_vector(n_tokens, n_prefix, token):
    q = torch.zeros(n_tokens)
    if token == "mean":
        q[n_prefix:] = 1.0 / (n_tokens - n_prefix)
    else:
        q[token] = 1.0
    return q


def rollout_reference(attentions, query):
    """Per image: query^T prod_l normalise((mean_heads A_l + I) / 2), as in the rollout paper."""
    attentions, query = [a.double() for a in attentions], query.double()
    rows = []
    for i in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        result = torch.eye(n, dtype=torch.double)
        for a in attentions:
            m = (a[i].mean(0) + torch.eye(n)) / 2
            result = (m / m.sum(-1, keepdim=True)) @ result
        rows.append(query @ result)
    return torch.stack(rows)


def chefer_reference(attentions, grads, query):
    """Per image: R = I; R += mean_heads((dA * A)^+) R per layer (Chefer et al. 2021)."""
    attentions, grads, query = [a.double() for a in attentions], [g.double() for g in grads], query.double()
    rows = []
    for i in range(attentions[0].shape[0]):
        relevance = torch.eye(attentions[0].shape[-1], dtype=torch.double)
        for a, g in zip(attentions, grads):
            relevance = relevance + (g[i] * a[i]).clamp(min=0).mean(0) @ relevance
        rows.append(query @ relevance)
    return torch.stack(rows)


def correlation(a, b):
    return float(torch.corrcoef(torch.stack([a.double().flatten(), b.double().flatten()]))[0, 1])


def save_clip_tokenizer(folder):
    """A real CLIP BPE tokenizer, offline: built from the vocabulary open_clip ships."""
    import transformers
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in simple.encoder.items()}
    merges = [tuple(m) for m in sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)]
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def write_images(folder, count=2, size=(40, 52), seed=0):
    """Small RGB PNGs with structure (a bright square on noise), so maps have something to find."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        array = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
        top, left = rng.integers(0, size[0] - 16), rng.integers(0, size[1] - 16)
        array[top:top + 16, left:left + 16] = 230
        path = folder / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


OPEN_CLIP_CFG = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, patch_size=8, width=24, layers=2, head_width=12, mlp_ratio=2.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=24, heads=2, layers=2),
)


def open_clip_tower_reference(tower, x):
    """open_clip's image tower written out here with explicit softmax(QK^T / sqrt(d)) in every block;
    returns (pooled embedding, per-layer attention with retain_grad)."""
    import torch.nn.functional as F

    h = tower.conv1(x).flatten(2).transpose(1, 2)
    h = torch.cat([tower.class_embedding.expand(h.shape[0], 1, -1), h], dim=1) + tower.positional_embedding
    h = tower.ln_pre(h)
    attentions = []
    for block in tower.transformer.resblocks:
        y = block.ln_1(h)
        mha = block.attn
        b, n, d = y.shape
        heads = mha.num_heads
        q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).reshape(b, n, 3, heads, d // heads).permute(
            2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        if attention.requires_grad:
            attention.retain_grad()
        attentions.append(attention)
        h = h + block.ls_1(mha.out_proj((attention @ v).transpose(1, 2).reshape(b, n, d)))
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
    pooled = tower.ln_post(h)[:, 0] @ tower.proj
    return pooled, attentions


def save_open_clip(model, folder, preprocess_cfg):
    """The folder layout open_clip's `local-dir:` loader reads: config JSON and safetensors weights."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG,
                                                              "preprocess_cfg": preprocess_cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))

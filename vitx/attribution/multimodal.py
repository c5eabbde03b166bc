"""Built-in targets that need the model itself: image-text and image-image similarity.

    targets = vitx.text_targets(clip, ["a photo of a dog", "a photo of a cat"])
    maps = [vitx.explain(clip, image, method="chefer2021", target=t).maps for t in targets]

The text embedding comes from the model's own text tower (through its adapter: open_clip
with its tokenizer, HF CLIP / SigLIP with the tokenizer saved beside it); the reference
embedding is the model's embedding of another image, preprocessed like the explained ones.
"""
from pathlib import Path
from typing import List, Sequence

import torch

from ..errors import VitxError
from .targets import SimilarityTarget, TextTarget, as_embedding, output_kind


def text_targets(model, prompts: Sequence[str], adapter=None) -> List[TextTarget]:
    """One `TextTarget` (cosine similarity of the image embedding to the prompt's) per prompt."""
    from ..registry import find_adapter

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise VitxError("text targets need non-empty prompts")
    adapter = adapter or find_adapter(model)
    with torch.no_grad():
        embeddings = adapter.encode_text(model, prompts)
    return [TextTarget(embedding, prompt) for embedding, prompt in zip(embeddings.detach(), prompts)]


def reference_target(model, image, adapter=None) -> SimilarityTarget:
    """Cosine similarity to the embedding `model` gives `image` (a path, PIL image or array)."""
    from ..capture.model_state import evaluation_mode
    from ..inputs import model_inputs

    adapter, pixels, _, _ = model_inputs(model, [image], adapter)
    with torch.no_grad(), evaluation_mode(model):
        output = model(pixels)
    if output_kind(output, adapter.output_kind(model)) != "embedding":
        raise VitxError(f"{type(model).__name__} is a classifier: a reference image is compared through an image "
                        "embedding, which needs a backbone or an image tower (e.g. Dinov2Model, CLIP)")
    name = Path(image).name if isinstance(image, (str, Path)) else "the reference image"
    return SimilarityTarget(as_embedding(output)[0], description=f"similarity to {name}")

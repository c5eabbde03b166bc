"""`explain`: one batched forward (and backward) per chunk, then the explainer's math.

This is where the pieces meet: the explainer (math), the adapter and recorder (attention),
the model's data config (inputs), targets, and the token layout. A method never sees any
of it beyond the recorded tensors and the query vector.
"""
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from ..capture.recorder import AttentionRecorder
from ..errors import VitxError
from .explanation import Explanation, normalise_maps
from ..inputs import prepare_images, to_model
from ..models import class_names, load_model
from ..registry import find_adapter, get_explainer


@contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode inside, and each module's own training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    for module, _ in flags:
        module.training = False
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def model_inputs(model: nn.Module, images, adapter=None):
    """(adapter, pixels on the model's device, views, sources): `images` preprocessed with the
    data config of the adapter that recognises `model`."""
    adapter = adapter or find_adapter(model)
    pixels, views, sources = prepare_images(images, adapter.data_config(model))
    return adapter, to_model(pixels, model), views, sources


def as_logits(output) -> torch.Tensor:
    """Logits from whatever a model returns (tensor, tuple, or an object with .logits)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise VitxError(f"cannot find logits in the model output ({type(output).__name__})")


def resolve_targets(target, logits: torch.Tensor) -> torch.Tensor:
    """None -> predicted class; int -> the same class for every image; sequence -> one each."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=-1)
    targets = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise VitxError(f"got {targets.numel()} targets for {batch} images")
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise VitxError(
            f"category index {int(bad[0])} out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return targets


def _explain_chunk(model, adapter, explainer, pixels, target, token):
    keep = None if explainer.needs_grad else explainer.keep
    with AttentionRecorder(model, adapter=adapter, keep=keep) as recorder:
        if explainer.needs_grad:
            with torch.enable_grad():
                logits = as_logits(model(pixels.detach().requires_grad_(True)))
                targets = resolve_targets(target, logits)
                recorder.check_recorded()
                gradients = recorder.gradients(logits.gather(1, targets[:, None]).sum())
        else:
            with torch.no_grad():
                logits = as_logits(model(pixels))
            targets = resolve_targets(target, logits)
            gradients = None
        layout = recorder.layout
    query = layout.query(token, device=pixels.device)
    attentions = [None if a is None else a.detach() for a in recorder.attentions]
    with torch.no_grad():
        relevance = explainer.attribute(attentions, query, gradients)
    return logits.detach(), targets, relevance, layout


def explain(
    model,
    images,
    method: str = "rollout",
    target=None,
    token: Optional[str] = None,
    batch_size: int = 32,
    adapter=None,
    device=None,
    **options,
) -> Explanation:
    """Explain a model's predictions on `images` with one method.

    model: an nn.Module, or a name for `load_model`. images: a (B, C, H, W) tensor already
    preprocessed, or paths / PIL images / arrays (preprocessed with the model's data
    config). target: None (predicted class), an int, or one int per image. token: which
    token to explain from ('cls', 'dist', 'mean', ...; default: what the head reads).
    options: the method's options (see `vitx methods`).
    """
    explainer = get_explainer(method).cls(**options)
    if not isinstance(model, nn.Module):
        model = load_model(model, device=device)
    if batch_size < 1:
        raise VitxError(f"batch size must be at least 1, got {batch_size}")
    adapter, pixels, views, sources = model_inputs(model, images, adapter)

    count = pixels.shape[0]
    targets = None if target is None else torch.as_tensor(target, dtype=torch.long).flatten()
    if targets is not None and targets.numel() not in (1, count):
        raise VitxError(f"got {targets.numel()} targets for {count} images")
    chunks = []
    with evaluation_mode(model):
        for start in range(0, count, batch_size):
            stop = start + batch_size
            chunk_target = targets if targets is None or targets.numel() == 1 else targets[start:stop]
            chunks.append(_explain_chunk(model, adapter, explainer, pixels[start:stop], chunk_target, token))

    logits = torch.cat([c[0] for c in chunks]).cpu()
    relevance = torch.cat([c[2] for c in chunks]).float().cpu()
    layout = chunks[0][3]
    return Explanation(
        maps=normalise_maps(layout.patch_map(relevance)),
        relevance=relevance,
        logits=logits,
        targets=torch.cat([c[1] for c in chunks]).cpu(),
        method=method,
        token=token or layout.default_token,
        layout=layout,
        views=views,
        class_names=class_names(model, logits.shape[-1]),
        sources=sources,
    )


def list_methods():
    """{name: (explainer class, plugin it came from)} for every registered explainer."""
    from ..registry import get_registry

    return {name: (e.cls, e.plugin) for name, e in sorted(get_registry().explainers.items())}

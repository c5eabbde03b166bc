"""`explain`: one batched forward (and backward) per chunk, then the explainer's math.

This is where the pieces meet: the explainer (math), the adapter and recorder (attention),
the model's data config (inputs), targets, and the token layout. A method never sees any
of it beyond the recorded tensors and the query vector.
"""
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..capture.model_state import evaluation_mode, model_lock
from ..capture.recorder import AttentionRecorder
from ..capture.support import check_method
from ..unwrap import unwrap
from ..baselines import baseline, check_baseline
from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError
from .evidence import Evidence
from .explainer import ATTENTION, ATTENTION_GRAD, MODEL, TOKENS
from .plan import RecordingPlan
from .explanation import Explanation, normalise_maps
from .targets import resolve_target, split_target
from ..inputs import model_inputs
from ..models import class_names, load_model, model_device
from ..registry import get_explainer


def _drop(layer, attention):
    return None  # the method does not read attention: keep none of it


class Chunk(NamedTuple):
    """What one chunk of images gives: its reported outputs, resolved target, relevance (B, N)
    and token layout."""

    logits: torch.Tensor
    target: object
    relevance: torch.Tensor
    layout: object


def _explain_chunk(model, adapter, explainer, pixels, target, token, layout=None, rows=None):
    """One batched forward (and backward when asked for) that records what `explainer`
    requires, then its math on the `Evidence`."""
    plan = RecordingPlan.of(explainer)
    grad, live = plan.gradients, plan.live
    # the gradient mode's function rules are entered first, so an adapter's own function mode
    # (above them on the stack) makes attention explicit before the rules see its softmax
    with explainer.gradient_rules(model), AttentionRecorder(
            model, adapter=adapter, layout=layout, attention=plan.attention, tokens=plan.tokens, states=plan.states,
            keep=None if grad else (explainer.keep if plan.keep else _drop),
            reduce=explainer.reduce if plan.reduce else None, fold=_fold(explainer, token) if plan.fold else None,
            heads=plan.heads, one_pass=plan.one_pass) as recorder:
        with torch.set_grad_enabled(grad):
            output = model(pixels.detach().requires_grad_(grad))
            resolved = resolve_target(target, output, adapter.output_kind(model))
            if plan.attention:
                recorder.check_recorded()
            score = resolved.score(output).sum() if grad else None
            if grad:
                _warn_if_flat(resolved, output, explainer, rows)
            token_grads = (recorder.token_gradients(score, retain_graph=live or plan.attention_gradients)
                           if plan.token_gradients else None)
            if plan.reduce:
                attentions, gradients = recorder.reduced(score), None
            else:
                gradients = recorder.gradients(score) if plan.attention_gradients else None
                attentions = [None if a is None else a.detach() for a in recorder.attentions]
        layout = recorder.layout
    evidence = Evidence(
        model=model, pixels=pixels.detach(), layout=layout, query=layout.query(token, device=pixels.device),
        output=_detach(output), target=resolved, attentions=attentions if plan.attention else None,
        attention_grads=gradients,
        tokens=[t.detach() for t in recorder.tokens] if TOKENS in plan.needs else None,
        token_grads=token_grads, folded=recorder.folded,
        block_states=recorder.block_states if plan.states else None,
        **_adapter_pieces(model, adapter, recorder, plan.needs, live), rows=rows,
        rules=lambda: explainer.gradient_rules(model), adapter=adapter,
    )
    with torch.set_grad_enabled(plan.runs_model):
        relevance = explainer.explain(evidence)
    if explainer.needs_gradients():
        _warn_if_constant(relevance.detach(), layout, explainer, rows)
    return Chunk(resolved.report(evidence.output), resolved, relevance.detach(), layout)


def _listed(indices, rows) -> str:
    """'3, 4, 7 ...': the caller's image numbers of a chunk's rows `indices` (`rows`: the chunk)."""
    first = rows.start if rows is not None and rows.start is not None else 0
    return ", ".join(str(first + i) for i in indices[:5]) + (" ..." if len(indices) > 5 else "")


def _warn_if_constant(relevance, layout, explainer, rows):
    """A gradient method whose map is the same on every patch learnt nothing: the target's
    score does not respond to the input there (a zero gradient: a constant or saturated
    output, a dead head). Say so instead of drawing a flat or noise-normalised picture."""
    patches = relevance[:, layout.patch_start:layout.patch_start + layout.num_patches].float()
    finite = torch.isfinite(patches).all(dim=1)
    flat = (finite & ((patches.amax(dim=1) - patches.amin(dim=1)) <= 1e-12 * patches.abs().amax(dim=1).clamp(min=1)))
    flat = flat.nonzero().flatten().tolist()
    if flat:
        warnings.warn(f"image {_listed(flat, rows)}: {explainer.name}'s map is the same on every patch: the target's score does "
                      "not respond to the input (its gradient is zero), so the map says nothing about it",
                      stacklevel=4)


def _warn_if_flat(target, output, explainer, rows):
    """A gradient method on a target at its maximum (the cosine of an embedding to itself) gets a
    zero gradient: its map would be rounding noise, silently. Say so, once per chunk."""
    flat = target.saturated(output)
    if flat:
        warnings.warn(f"image {_listed(flat, rows)}: the target's cosine similarity is 1 (the image's own embedding), a "
                      f"maximum where its gradient is zero, so {explainer.name}'s map is rounding noise; explain "
                      f"SimilarityTarget(reference, measure='projection') instead", stacklevel=4)


def _fold(explainer, token):
    """The recorder's fold callback: the explainer's `fold` with the explained token's query."""
    def fold(layer, attention, running, layout):
        return explainer.fold(layer, attention, running, layout.query(token, device=attention.device))

    return fold


def _adapter_pieces(model, adapter, recorder, needs, live) -> dict:
    """The Evidence fields that come from the adapter, and the live graph tensors, for the
    methods that need them."""
    pieces = {}
    if MODEL in needs:
        pieces["data_config"] = adapter.preprocessing(model)  # mean / std: what 'black' is in the input space
    if TOKENS in needs:
        pieces["head"] = adapter.head(model)  # tokens -> output (final norm, pooling, classifier) or None
    if live:
        pieces["graph_attentions"] = list(recorder.graph_attentions)
        pieces["graph_tokens"] = recorder.tokens if TOKENS in needs else None
    return pieces


def _detach(output):
    if torch.is_tensor(output):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    return output


def _check_call(model: nn.Module, explainer, device) -> None:
    """Problems that would otherwise surface as a raw error deep inside torch."""
    if device is not None and device != "auto":
        from ..models import resolve_device

        wanted, actual = resolve_device(device), model_device(model)
        if wanted.type != actual.type or (wanted.index is not None and wanted.index != actual.index):
            raise VitxError(
                f"explain(device={str(device)!r}) was given a model that lives on {actual}; vitx does not move "
                f"your module behind your back: call model.to({str(wanted)!r}) first, or pass a model name"
            )
    if torch.is_inference_mode_enabled() and (explainer.uses_gradients() or MODEL in explainer.requirements()):
        raise VitxError(
            f"method {explainer.name!r} needs gradients, which torch.inference_mode() forbids: call vitx.explain "
            "outside the inference_mode block (vitx itself turns gradients off wherever it can)"
        )


def explain(
    model,
    images,
    method: str = "rollout",
    target=None,
    token: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    adapter=None,
    device=None,
    layout=None,
    **options,
) -> Explanation:
    """Explain a model's predictions on `images` with one method.

    model: an nn.Module, or a name for `load_model`. images: a (B, C, H, W) tensor already
    preprocessed, or paths / PIL images / arrays (preprocessed with the model's data
    config). target: None (predicted class), an int, or one int per image. token: which
    token to explain from ('cls', 'dist', 'mean', ...; default: what the head reads).
    layout: override where the patches are: (h, w) / 'HxW' (the extra tokens come first), or a
    TokenLayout. options: the method's options (see `vitx methods`).
    """
    explainer = get_explainer(method).cls(**options)
    if not isinstance(model, nn.Module):
        model = load_model(model, device=device)
    else:
        _check_call(model, explainer, device)
    model = unwrap(model)  # DataParallel / DDP / torch.compile: run the eager module itself
    if batch_size < 1:
        raise VitxError(f"batch size must be at least 1, got {batch_size}")
    adapter, pixels, views, sources = model_inputs(model, images, adapter)
    check_method(adapter, model, explainer)  # a family the method cannot explain says why, before any forward
    if pixels.is_inference():
        pixels = pixels.clone()  # a batch made under inference_mode cannot enter autograd

    count = pixels.shape[0]
    split_target(target, 0, count, count)  # validate once, before any forward
    for option in explainer.options:
        if option.type is baseline:
            check_baseline(getattr(explainer, option.name), pixels.shape)
    chunks = []
    with model_lock(model), evaluation_mode(model):
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            chunk_target = split_target(target, start, stop, count)
            chunks.append(_explain_chunk(model, adapter, explainer, pixels[start:stop], chunk_target, token, layout,
                                         slice(start, stop)))

    note = adapter.token_note(model) if token is None and explainer.requirements() & {ATTENTION, ATTENTION_GRAD} else None
    if note:
        warnings.warn(f"{method}: {note}", stacklevel=2)
    logits = torch.cat([c.logits for c in chunks]).cpu()
    relevance = torch.cat([c.relevance for c in chunks]).float().cpu()
    layout = chunks[0].layout
    indices = [c.target.indices for c in chunks]
    return Explanation(
        maps=normalise_maps(layout.patch_map(relevance)),
        relevance=relevance,
        logits=logits,
        targets=torch.cat(indices).cpu() if all(i is not None for i in indices) else None,
        method=method,
        token=token or layout.default_token,
        layout=layout,
        views=views,
        class_names=class_names(model, logits.shape[-1]),
        sources=sources,
        target_description=chunks[0].target.description,
        token_note=note,
    )


def list_methods():
    """{name: (explainer class, plugin it came from)} for every registered explainer."""
    from ..registry import get_registry

    return {name: (e.cls, e.plugin) for name, e in sorted(get_registry().explainers.items())}

"""What is explained: a `(B,)` score computed from the model's output.

A target is fixed once, on the output of the explained forward pass (the predicted class is
chosen there), and then scores any later forward of the same images the same way: the
integrated-gradients path, perturbed copies, LRP's modified backward. That is the contract
of captum and pytorch-grad-cam (a callable on the output), so user code written for them
carries over:

    vitx.explain(model, images, target=lambda out: out[:, 3] - out[:, 5])

Built in: a class index (`None` = predicted class, an int, or one int per image), any
callable `output -> (B,) score`, the cosine similarity of the image embedding to a reference
embedding (`SimilarityTarget`: another image, or a text prompt for CLIP / SigLIP), and the
output itself for a regression model ((B,) or (B, 1) outputs).

A headless model (a backbone or an image tower: its output is an embedding) is never
explained as if its embedding dimensions were classes: its default target is the embedding's
length along its own direction (`EmbeddingTarget`), and a class index is refused.
"""
import copy
import numbers
from typing import Callable, Optional

import torch

from ..errors import VitxError


def as_logits(output) -> torch.Tensor:
    """The tensor a classifier's output holds (tensor, tuple, or an object with .logits)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits") and torch.is_tensor(output.logits):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise VitxError(f"cannot find logits in the model output ({type(output).__name__})")


def as_embedding(output) -> torch.Tensor:
    """The (B, D) image embedding in a model's output: a tensor, an HF output's `image_embeds`
    or `pooler_output`, open_clip's `image_features` (dict or tuple), else the first token."""
    if torch.is_tensor(output):
        embedding = output
    elif isinstance(output, dict) and torch.is_tensor(output.get("image_features")):
        embedding = output["image_features"]
    elif torch.is_tensor(getattr(output, "image_embeds", None)):
        embedding = output.image_embeds
    elif torch.is_tensor(getattr(output, "pooler_output", None)):
        embedding = output.pooler_output
    elif torch.is_tensor(getattr(output, "last_hidden_state", None)):
        embedding = output.last_hidden_state[:, 0]
    elif isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        embedding = output[0]
    else:
        raise VitxError(f"cannot find an image embedding in the model output ({type(output).__name__})")
    if embedding.dim() != 2:
        raise VitxError(f"expected a (batch, dim) image embedding, the model returned shape {tuple(embedding.shape)}")
    return embedding


def output_kind(output, hint: str = "logits") -> str:
    """'logits' or 'embedding'. An HF output with logits is logits, one with only a pooled output
    or embeddings is an embedding, whatever the hint; a tensor or tuple cannot tell, so the
    adapter's hint decides."""
    if torch.is_tensor(output) or isinstance(output, (tuple, list)):
        return hint
    if getattr(output, "logits", None) is not None:
        return "logits"
    if any(torch.is_tensor(getattr(output, k, None)) for k in ("pooler_output", "image_embeds", "last_hidden_state")):
        return "embedding"
    if isinstance(output, dict) and torch.is_tensor(output.get("image_features")):
        return "embedding"
    return hint


class Target:
    """A fixed way to score an output. `indices` are class indices when the target is a class."""

    indices: Optional[torch.Tensor] = None
    description: str = "target"

    def score(self, output) -> torch.Tensor:
        raise NotImplementedError

    def report(self, output) -> torch.Tensor:
        """(B, K) numbers to show with the map: class logits for a class target, else the score."""
        return self.score(output).detach()[:, None]

    def saturated(self, output) -> list:
        """Images where the score sits at a maximum with a zero gradient (none, for most targets)."""
        return []

    def for_images(self, start: int, stop: int, count: int) -> "Target":
        """The target of images [start, stop) of `count` (explain() runs in chunks): the same one,
        unless it holds something per image."""
        return self


class ClassTarget(Target):
    """The logit of one class per image."""

    def __init__(self, indices: torch.Tensor):
        self.indices = indices
        self.description = "class"

    def score(self, output) -> torch.Tensor:
        logits = as_logits(output)
        return logits.gather(1, self.indices.to(logits.device)[:, None])[:, 0]

    def report(self, output) -> torch.Tensor:
        return as_logits(output).detach()


class CallableTarget(Target):
    """Any `output -> (B,) score` function (captum / pytorch-grad-cam convention)."""

    def __init__(self, function: Callable):
        self.function = function
        self.description = getattr(function, "__name__", "callable")

    def score(self, output) -> torch.Tensor:
        value = self.function(output)
        if not torch.is_tensor(value) or value.dim() != 1:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise VitxError(f"a target callable must return a (batch,) tensor of scores, got {shape}")
        return value

    def report(self, output) -> torch.Tensor:
        try:
            logits = as_logits(output)
        except VitxError:
            return super().report(output)
        return logits.detach() if logits.dim() == 2 else super().report(output)


class RegressionTarget(Target):
    """The output of a regression model ((B,) or (B, 1)): explains the predicted value."""

    description = "the regression output"

    def score(self, output) -> torch.Tensor:
        value = as_logits(output)
        return value[:, 0] if value.dim() == 2 else value


class EmbeddingTarget(Target):
    """Default for a headless model: the embedding's length along its own direction.

    score = <e, stopgrad(e) / |stopgrad(e)|>, which equals |e| at the explained image, and
    whose gradient is the direction the embedding points to, so gradient methods explain
    "what makes this embedding what it is" rather than one arbitrary dimension.
    """

    description = "the norm of the image embedding (headless model; pass a reference image or a text for a similarity)"

    def __init__(self, direction: Optional[torch.Tensor] = None):
        self.direction = direction

    def score(self, output) -> torch.Tensor:
        embedding = as_embedding(output)
        direction = self.direction
        if direction is not None and direction.shape[0] != embedding.shape[0] and embedding.shape[0] % direction.shape[0] == 0:
            direction = direction.repeat(embedding.shape[0] // direction.shape[0], 1)  # copies stacked on the batch
        if direction is None or direction.shape[0] != embedding.shape[0]:
            direction = embedding.detach()
        direction = torch.nn.functional.normalize(direction.to(embedding), dim=-1)
        return (embedding * direction).sum(-1)


SIMILARITY_MEASURES = ("cosine", "projection")


class SimilarityTarget(Target):
    """Similarity of the image embedding to a fixed reference embedding: one (D,) (or (1, D))
    for every image (another image's embedding, `--reference`, or a text prompt's,
    `TextTarget`), or one row per image ((B, D): e.g. each image's own unperturbed embedding,
    which a faithfulness curve follows as the image is perturbed). Like the other targets, a
    batch of k stacked copies of the B images is scored copy by copy.

    `measure`: ``"cosine"`` (default; CLIP's image-text score up to its temperature) or
    ``"projection"``, <e, r> / <r, r>: the embedding's length along the reference, 1 at the
    reference. Explaining an image against its *own* embedding needs the projection: the cosine
    is at its maximum there, so its gradient is zero and every gradient map is rounding noise
    (the core warns when it sees that); the projection's gradient is `J^T r / |r|^2`, and it still
    falls as perturbations shrink or turn the embedding."""

    def __init__(self, reference: torch.Tensor, description: str = "similarity to the reference image",
                 measure: str = "cosine"):
        if measure not in SIMILARITY_MEASURES:
            raise VitxError(f"unknown similarity measure {measure!r}: one of {', '.join(SIMILARITY_MEASURES)}")
        self.measure = measure
        reference = reference.detach()
        if reference.dim() == 2 and reference.shape[0] == 1:
            reference = reference[0]
        if reference.dim() not in (1, 2):
            raise VitxError(f"a reference embedding must be one (dim,) vector or one (batch, dim) row per image, "
                            f"got shape {tuple(reference.shape)}")
        self.reference = reference
        self.description = description

    def score(self, output) -> torch.Tensor:
        embedding = as_embedding(output)
        if embedding.shape[-1] != self.reference.shape[-1]:
            raise VitxError(f"the reference embedding has {self.reference.shape[-1]} dimensions but the model's "
                            f"image embedding has {embedding.shape[-1]}")
        reference = self.reference.to(embedding)
        if reference.dim() == 1:
            reference = reference[None]
        elif reference.shape[0] != embedding.shape[0]:
            if embedding.shape[0] % reference.shape[0]:
                raise VitxError(f"{reference.shape[0]} reference embeddings (one per image) for a batch of "
                                f"{embedding.shape[0]} images")
            reference = reference.repeat(embedding.shape[0] // reference.shape[0], 1)
        if self.measure == "projection":
            return (embedding * reference).sum(-1) / (reference * reference).sum(-1)
        return torch.nn.functional.cosine_similarity(embedding, reference, dim=-1)

    def for_images(self, start: int, stop: int, count: int) -> "SimilarityTarget":
        """With one reference row per image, each chunk is scored against its own images' rows."""
        if self.reference.dim() != 2 or self.reference.shape[0] != count or count == 1:
            return self
        part = copy.copy(self)
        part.reference = self.reference[start:stop]
        return part

    def saturated(self, output) -> list:
        """Images whose cosine to the reference is 1 (their own embedding): a maximum, where the
        gradient of the score is zero. Empty for the projection, whose gradient does not vanish."""
        if self.measure != "cosine":
            return []
        with torch.no_grad():
            return torch.nonzero(self.score(output).detach() > 1 - 1e-5).flatten().tolist()


class TextTarget(SimilarityTarget):
    """Cosine similarity of the image embedding to a text prompt's embedding (CLIP, SigLIP)."""

    def __init__(self, text_embedding: torch.Tensor, prompt: str):
        super().__init__(text_embedding, description=f"similarity to the text {prompt!r}")
        self.prompt = prompt


def _class_indices(target) -> torch.Tensor:
    """Validated class indices: ints only (no bools, strings or fractional numbers)."""
    values = target.flatten().tolist() if torch.is_tensor(target) else (
        list(target) if isinstance(target, (list, tuple)) else [target])
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
                continue  # 243.0 from a tensor or numpy float: an integer in disguise
            raise VitxError(f"a class target must be an integer class index, got {value!r} ({type(value).__name__})")
    if not values:
        raise VitxError("empty target list")
    try:
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    except (OverflowError, RuntimeError, ValueError):
        raise VitxError(f"class index out of range: {target!r}") from None


def resolve_target(target, output, kind: str = "logits") -> Target:
    """Fix the target on the output of the explained forward.

    None -> the predicted class (an embedding model: `EmbeddingTarget`; a regression model:
    its output); an int or a sequence of ints -> those classes (checked against the class
    count); a callable -> that score; a `Target` -> itself. `kind` is the adapter's word on
    what the output is ('logits' or 'embedding').
    """
    if isinstance(target, Target):
        return target
    if callable(target) and not torch.is_tensor(target):
        return CallableTarget(target)
    if output_kind(output, kind) == "embedding":
        if target is None:
            return EmbeddingTarget(as_embedding(output).detach())
        raise VitxError(
            f"this model outputs an image embedding, not class scores, so a class index ({target!r}) would explain "
            "one embedding dimension: use a similarity target (--reference IMAGE, --text PROMPT, SimilarityTarget) "
            "or a callable"
        )
    logits = as_logits(output)
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        if target is None or (not torch.is_tensor(target) and target == 0):
            return RegressionTarget()
    if logits.dim() != 2:
        raise VitxError(f"class targets need (batch, classes) logits; the model returned shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape
    if target is None:
        return ClassTarget(logits.detach().argmax(dim=-1))
    indices = _class_indices(target).to(logits.device)
    if indices.numel() == 1:
        indices = indices.expand(batch)
    if indices.numel() != batch:
        raise VitxError(f"got {indices.numel()} targets for {batch} images")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.numel():
        raise VitxError(
            f"category index {int(bad[0])} out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return ClassTarget(indices)


def split_target(target, start: int, stop: int, count: int):
    """The part of a user's target that belongs to images [start, stop) of `count`."""
    if isinstance(target, Target):
        return target.for_images(start, stop, count)
    if target is None or callable(target):
        return target
    indices = _class_indices(target)
    if indices.numel() == 1:
        return indices
    if indices.numel() != count:
        raise VitxError(f"got {indices.numel()} targets for {count} images")
    return indices[start:stop]

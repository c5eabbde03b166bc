"""Hugging Face PvtV2 (PvtV2ForImageClassification, PvtV2Model): spatial-reduction attention
as pooled layers chained through the overlapping patch embeddings, as for timm's PVTv2
(vitx.capture.adapters.timm_pooled, where the flow and what it leaves out are described).

`PvtV2SelfAttention` computes its own softmax, so its probabilities are taken at `attn_drop`;
the grid comes from the attention's (height, width) arguments, the key pooling from its
`pool` (linear variant) or `spatial_reduction` convolution, and the merge between stages from
the next stage's `patch_embedding.proj`.
"""
from contextlib import ExitStack, contextmanager

from ..stages import Pooled
from .pyramid import PyramidAdapter
from .timm_pooled import PVT_WHY, conv_merge_of, key_merge
from .transformers import TransformersAdapter, hf_model


class HFPvtV2Adapter(PyramidAdapter):
    name = "transformers_pvt_v2"
    priority = 95  # before the generic transformers adapter

    def matches(self, model):
        inner = hf_model(model)
        return inner is not None and getattr(inner.config, "model_type", None) == "pvt_v2"

    def family(self, model):
        return "PVTv2 (Hugging Face)", PVT_WHY

    @contextmanager
    def attach(self, model, record):
        with ExitStack() as stack:
            chain = stack.enter_context(self.chained(model))
            for stage in hf_model(model).base_model.encoder.layers:
                for block in stage.blocks:
                    stack.enter_context(_block(block.attention, stage.patch_embedding.proj, chain, record))
            yield

    data_config = TransformersAdapter.data_config
    output_kind = TransformersAdapter.output_kind


@contextmanager
def _block(attn, embedding, chain, record):
    seen = {}

    def grab(module, args, kwargs):
        names = ("hidden_states", "height", "width")
        values = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
        seen["grid"] = (int(values["height"]), int(values["width"]))

    def on_attention(module, inputs, probs):
        grid = seen["grid"]
        keys = key_merge(grid, getattr(attn, "pool", None) if attn.linear_attention else None,
                         attn.spatial_reduction if attn.spatial_reduction_ratio > 1 else None, probs.device)
        entry = chain.enter(grid, lambda before, after: conv_merge_of(embedding, before, after))
        return record(Pooled(probs, grid, entry, keys=keys)).blocks

    handles = [attn.register_forward_pre_hook(grab, with_kwargs=True),
               attn.attn_drop.register_forward_hook(on_attention)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

"""What a model is and what it computed: adapters, the recorder, token layouts."""
from .adapters import Adapter
from .layout import TokenLayout
from .recorder import AttentionRecorder, record_attention

__all__ = ["Adapter", "AttentionRecorder", "TokenLayout", "record_attention"]

"""Complete models built from :mod:`minitx.nn`."""

from .sequence_encoder import SequenceEncoder, padding_mask_from_attention_mask

__all__ = ["SequenceEncoder", "padding_mask_from_attention_mask"]

"""Complete models built from :mod:`minitx.nn`: the seed's SequenceEncoder, BERT with its pre-training heads,
the TaskAdapter classifier, and a GPT language model with its sequence classifier; :mod:`.sampling` turns any
model's next-token logits into a token. Published weights load through :mod:`minitx.hub`, above this package."""

from ..functional import padding_mask_from_attention_mask  # kept here for old imports; it lives in functional
from .bert import BertConfig, BertEmbeddings, BertForPretraining, BertModel
from .gpt import GPT, GPTConfig, GPTForSequenceClassification
from .sequence_encoder import SequenceEncoder
from .task_adapter import TaskAdapter

__all__ = ["BertConfig", "BertEmbeddings", "BertForPretraining", "BertModel", "GPT", "GPTConfig",
           "GPTForSequenceClassification", "SequenceEncoder", "TaskAdapter",
           "padding_mask_from_attention_mask"]

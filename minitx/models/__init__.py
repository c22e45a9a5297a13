"""Complete models built from :mod:`minitx.nn`: the seed's SequenceEncoder, BERT (pre-training heads and
Hugging Face weights), the TaskAdapter classifier, and a GPT language model with its sequence classifier."""

from ..functional import padding_mask_from_attention_mask  # kept here for old imports; it lives in functional
from .bert import BertConfig, BertEmbeddings, BertForPretraining, BertModel
from .gpt import GPT, GPTConfig, GPTForSequenceClassification
from .sequence_encoder import SequenceEncoder
from .task_adapter import TaskAdapter

__all__ = ["BertConfig", "BertEmbeddings", "BertForPretraining", "BertModel", "GPT", "GPTConfig",
           "GPTForSequenceClassification", "SequenceEncoder", "TaskAdapter",
           "padding_mask_from_attention_mask"]

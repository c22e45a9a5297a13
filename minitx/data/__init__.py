"""Data: built-in corpora, fetched real data, datasets, loaders and pre-training collators.

Nothing here downloads on import; :mod:`minitx.data.fetch` downloads only
when one of its functions is called.
"""

from .corpus import corpus_text, ordered_documents, sentiment_sentences
from .fetch import FetchError, gpt2_ranks_path, minilm_path, movie_reviews
from .loader import DataLoader, Dataset, ListDataset, default_collate
from .pretraining import IGNORE_INDEX, MLMCollator, SOPMLMCollator, sentence_order_pairs

__all__ = [
    "corpus_text", "ordered_documents", "sentiment_sentences",
    "FetchError", "gpt2_ranks_path", "minilm_path", "movie_reviews",
    "DataLoader", "Dataset", "ListDataset", "default_collate",
    "IGNORE_INDEX", "MLMCollator", "SOPMLMCollator", "sentence_order_pairs",
]

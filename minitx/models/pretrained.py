"""Moved: loading published checkpoints now lives in :mod:`minitx.hub`, above the models (a model does not
read files or build tokenisers). Importing a name from here raises an ImportError that names its new place."""

_MOVED = {"from_pretrained": "load_bert", "load_tokenizer": "load_bert_tokenizer", "load_pretrained": "load_pretrained",
          "config_from_hf": "config_from_hf", "hf_name_map": "hf_name_map", "load_hf_weights": "load_hf_weights",
          "CheckpointMismatchError": "CheckpointMismatchError", "EMBEDDING_NAMES": "EMBEDDING_NAMES",
          "POOLER_NAMES": "POOLER_NAMES", "LAYER_NAMES": "LAYER_NAMES", "IGNORED_KEYS": "IGNORED_KEYS"}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"minitx.models.pretrained.{name} has moved: use minitx.hub.{_MOVED[name]}")
    raise AttributeError(f"module 'minitx.models.pretrained' has no attribute {name!r} (checkpoint loading "
                         f"lives in minitx.hub)")

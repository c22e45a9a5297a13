"""The seed's TaskAdapter: a frozen pre-trained encoder, masked mean pooling, and a trained linear classifier.

For a text x_1…x_T with attention mask m_t (1 = real token, 0 = padding) the frozen encoder gives hidden
states h_1…h_T; the adapter averages them over the real tokens and scores each class linearly:

    h = Encoder(x)                                   (B, T, D)   frozen: no parameter changes, no graph
    f = Σ_t m_t h_t / max(Σ_t m_t, 1)                (B, D)      masked mean pooling
    logits = f Wᵀ + b                                (B, C)      the only trained weights: W (C, D), b (C,)

Training only W and b is logistic regression on fixed features, so it is cheap and cannot damage what the
encoder learned in pre-training ("linear probing").

Differences from the seed's PyTorch code, on purpose: the seed pools with ``encoded.mean(dim=1)``, so the
padding positions of a batch are averaged in and a text's features depend on the length of its batch
neighbours; here only real tokens count (with no padding the two agree). The seed reads the hidden size from
``encoder.output_projection.in_features`` but pools the encoder's *output* (vocabulary logits); here the
encoder's hidden states come from ``encoder.encode`` and their size from ``encoder.hidden_size``. And the
encoder stays in evaluation mode (no dropout) while the classifier trains, as a frozen feature extractor should.
"""

from __future__ import annotations

from .. import functional as F
from ..backend import get_array_module
from ..nn import Linear, Module
from ..tensor import Tensor, no_grad


class TaskAdapter(Module):
    """Frozen ``encoder`` + masked mean pooling + ``classifier`` = Linear(hidden_size, num_classes).

    ``encoder`` is any module with ``encode(input_ids, attention_mask) -> (B, T, D)`` and ``hidden_size``
    (D), e.g. :class:`~minitx.models.BertModel` or :class:`~minitx.models.SequenceEncoder`. Its parameters
    are frozen (``requires_grad=False``) and it is kept in eval mode, even when the adapter is ``train()``-ed.
    Train the weights of :meth:`classifier_parameters`.
    """

    def __init__(self, encoder: Module, num_classes: int):
        super().__init__()
        if not (callable(getattr(encoder, "encode", None)) and hasattr(encoder, "hidden_size")):
            raise TypeError(f"TaskAdapter: encoder must have encode(input_ids, attention_mask) and hidden_size, "
                            f"got {type(encoder).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"TaskAdapter: num_classes must be an integer >= 2, got {num_classes!r}")
        reference = next(encoder.parameters())  # the classifier lives where the encoder's weights do
        for param in encoder.parameters():
            param.requires_grad = False
        self.encoder = encoder.eval()
        self.classifier = Linear(encoder.hidden_size, num_classes, dtype=reference.dtype, device=reference.device)

    def train(self, mode: bool = True) -> "TaskAdapter":
        """Set the classifier's mode; the frozen encoder always stays in eval mode (dropout off)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def classifier_parameters(self) -> list:
        """The trainable parameters: the classifier's W (C, D) and b (C,)."""
        return list(self.classifier.parameters())

    def features(self, input_ids, attention_mask=None) -> Tensor:
        """f = Σ_t m_t h_t / max(Σ_t m_t, 1): input_ids (B, T), attention_mask (B, T) -> (B, D), no graph.

        ``attention_mask`` 1 = real token, 0 = padding (default: every token is real).
        """
        ids = input_ids.data if isinstance(input_ids, Tensor) else input_ids
        xp = get_array_module(ids)
        ids = xp.asarray(ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"TaskAdapter: input_ids must be integer token ids of shape (B, T), "
                             f"got dtype {ids.dtype} and shape {tuple(ids.shape)}")
        if attention_mask is None:
            mask = xp.ones(ids.shape, dtype=xp.int64)  # (B, T)
        else:
            mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
            mask = xp.asarray(mask)
            if mask.shape != ids.shape:
                raise ValueError(f"TaskAdapter: attention_mask must have the shape of input_ids {tuple(ids.shape)}, "
                                 f"got {tuple(mask.shape)}")
        with no_grad():
            hidden = self.encoder.encode(input_ids, attention_mask)  # (B, T, D)
            expected = (*ids.shape, self.encoder.hidden_size)
            if hidden.shape != expected:
                raise ValueError(f"TaskAdapter: encoder.encode returned shape {hidden.shape}, expected (B, T, D) = "
                                 f"{expected}")
            return F.mean_pool(hidden, mask)  # (B, D)

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """logits = classifier(features): input_ids (B, T), attention_mask (B, T) -> (B, num_classes)."""
        return self.classifier(self.features(input_ids, attention_mask))  # (B, C)

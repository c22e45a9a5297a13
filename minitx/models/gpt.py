"""GPT (Radford et al., 2018, 2019): a stack of pre-norm causal decoder blocks trained to predict the next token.

Input: ids x_1…x_T. With E the token-embedding table (V, D) and P the learned position table (max_len, D):

    h⁰_t = Dropout(E[x_t] + P[t])                                               (B, T, D)
    hˡ   = DecoderBlock(hˡ⁻¹),  l = 1…L        (pre-norm, causal: position t sees only positions ≤ t)
    z_t  = LayerNorm_f(h^L_t) Eᵀ                                                (B, T, V) logits
    P(x_{t+1} = v | x_≤t) = softmax(z_t)_v

The output matrix is the embedding table itself (tied weights): the score of token v is the dot product of
the final hidden state with v's input vector, and one (V, D) parameter receives both gradients.

Training minimises the mean next-token cross-entropy  L = -(1/N) Σ_t log P(x_{t+1} | x_≤t).
Generation repeats: compute z_T for the last position, turn it into a distribution (temperature, top-k,
top-p: :mod:`minitx.models.sampling`), draw a token, append it. A KV cache keeps every layer's keys and values so
each new token costs one position instead of re-running the whole prefix.

:class:`GPTForSequenceClassification` reads the final hidden state of each sequence's last real token (the
only position that has seen the whole text) and maps it to class logits: the GPT-2 recipe for fine-tuning
on, e.g., sentiment.

Parameter layout vs Hugging Face's GPT-2: ``wte``, ``wpe``, ``ln_f`` as there; ``blocks.l`` is ``h.l``;
GPT-2's fused ``c_attn`` (D, 3D) is our q/k/v projections, and its Conv1D weights are stored transposed
((in, out)) where ours are (out, in) like ``torch.nn.Linear``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import (DecoderBlock, Dropout, Embedding, LayerNorm, LearnedPositionalEmbedding, Linear, Module,
                  ModuleList, init, kv_cache_length)
from ..tensor import Tensor, no_grad
from .init import normal_init_
from .sampling import check_sampling_arguments, sample_next_token

INIT_STD = 0.02  # GPT-2's initializer_range


def _is_int_at_least(value, minimum: int) -> bool:
    """True for an integer (not a bool) >= ``minimum``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


@dataclass
class GPTConfig:
    """Sizes of a GPT, named as in :mod:`minitx.nn` (``d_model``, ``num_heads``, ``num_layers``,
    ``dim_feedforward``, ``max_len``). ``activation`` is the MLP's non-linearity: GPT-2 uses the tanh approximation of GELU
    (``"gelu_tanh"``, Hugging Face's "gelu_new"); ``dropout`` acts on the embeddings, the attention weights
    and both residual branches."""

    vocab_size: int
    max_len: int
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    dropout: float = 0.1
    activation: str = "gelu_tanh"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "d_model", "num_heads", "num_layers", "dim_feedforward"):
            value = getattr(self, name)
            if not _is_int_at_least(value, 1):
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"GPTConfig: d_model {self.d_model} is not divisible by num_heads {self.num_heads}")


# ------------------------------------------------------------------------------------ inputs and masks
def _as_int_array(values, name: str, device: str):
    """``values`` (Tensor, NumPy/CuPy array or nested list of ints) as an integer array on ``device``."""
    array = values.data if isinstance(values, Tensor) else values
    if not hasattr(array, "dtype"):
        array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise TypeError(f"GPT: {name} must hold integers, got dtype {array.dtype} (shape {tuple(array.shape)})")
    return backend.to_device(array, device)


def real_token_mask(attention_mask, shape: tuple, device: str):
    """HF-style attention_mask (B, T), 1 = real token, 0 = padding -> boolean (B, T) on ``device``, True = real
    token (the complement of :func:`minitx.functional.padding_mask_from_attention_mask`)."""
    return ~F.padding_mask_from_attention_mask(attention_mask, shape, device)


def last_token_index(real):
    """The index of the last real token of each row: real (B, T) bool -> (B,) ints.

    It is the position of the last True, T - 1 - argmax(real reversed along T), which is right for right
    padding (``1 1 1 0 0`` -> 2) and for left padding (``0 0 1 1 1`` -> 4) alike.
    """
    empty = ~real.any(axis=1)
    if empty.any():
        rows = [int(i) for i in empty.nonzero()[0]]
        raise ValueError(f"attention_mask: row(s) {rows} have no real token (all zeros); a sequence classifier "
                         "reads each row's last real token")
    steps = real.shape[1]
    return steps - 1 - real[:, ::-1].argmax(axis=1)


def last_token_states(h, attention_mask=None):
    """h (B, T, D) -> (B, D): each row's state at its last real token (T - 1 without a mask); what a decoder's
    sequence classifier reads, since only the last token has seen the whole sequence."""
    batch, steps, _ = h.shape
    xp = h.xp
    if attention_mask is None:
        last = xp.full(batch, steps - 1)
    else:
        last = last_token_index(real_token_mask(attention_mask, (batch, steps), h.device))  # (B,)
    return h[xp.arange(batch), last]


# -------------------------------------------------------------------------------- the language model
class GPT(Module):
    """A GPT language model: ids (B, T) -> next-token logits (B, T, V); see the module docstring.

    Sub-modules: ``wte`` (token embedding, also the output matrix), ``wpe`` (learned positions), ``drop``,
    ``blocks`` (``num_layers`` :class:`~minitx.nn.DecoderBlock`), ``ln_f`` (final LayerNorm).

    Initialisation (GPT-2's): every weight matrix and both embedding tables ~ N(0, 0.02²), biases 0,
    LayerNorm γ = 1, β = 0, except the last projection of each residual branch (``attn.out_proj`` and
    ``mlp.linear2``), which gets std 0.02/√(2L). Why: the residual stream is a sum
    h^L = h⁰ + Σ_{l=1}^{L} (attn_l + mlp_l) of 2L branch outputs; if each adds variance σ² the stream ends with
    ≈ 2L·σ², growing with depth. Scaling those weights by 1/√(2L) scales each branch's variance by 1/(2L),
    so at initialisation the stream's variance no longer depends on the number of layers.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.d_model)
        self.wpe = LearnedPositionalEmbedding(config.max_len, config.d_model)
        self.drop = Dropout(config.dropout)
        self.blocks = ModuleList([
            DecoderBlock(config.d_model, config.num_heads, config.dim_feedforward, config.dropout, config.activation,
                         config.layer_norm_eps) for _ in range(config.num_layers)])
        self.ln_f = LayerNorm(config.d_model, config.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation (see the class docstring)."""
        normal_init_(self, INIT_STD)
        residual_std = INIT_STD / math.sqrt(2 * self.config.num_layers)
        for block in self.blocks:
            init.normal_(block.attn.out_proj.weight, std=residual_std)
            init.normal_(block.mlp.linear2.weight, std=residual_std)

    @property
    def device(self) -> str:
        return self.wte.weight.device

    def _ids(self, input_ids):
        """``input_ids`` as an integer (B, T) array on the model's device, T ≥ 1 (ids are range-checked by
        the embedding)."""
        ids = _as_int_array(input_ids, "input_ids", self.device)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"GPT: input_ids must have shape (B, T) with T >= 1, got {tuple(ids.shape)}")
        return ids

    def hidden_states(self, input_ids, attention_mask=None, past_kv=None, use_cache: bool = False):
        """The final hidden states LayerNorm_f(h^L) (B, T, D), or (states, presents) with ``use_cache``.

        ``attention_mask`` (B, P + T): 1 = real token, 0 = padding, over the P cached and the T new tokens;
        padding keys are hidden from every query. ``past_kv``: the ``presents`` of an earlier call, one
        (keys, values) pair per block, each (B, H, P, d_k); the new tokens then sit at positions P…P+T-1.
        """
        ids = self._ids(input_ids)
        batch, steps = ids.shape
        past_len = kv_cache_length(past_kv, len(self.blocks), batch, "GPT")
        if past_len + steps > self.config.max_len:
            raise ValueError(f"GPT: {past_len} cached + {steps} new tokens exceed max_len={self.config.max_len}; "
                             f"crop the input to the last {self.config.max_len} tokens")
        padding = F.padding_mask_from_attention_mask(attention_mask, (batch, past_len + steps), self.device,
                                                     of="the cached and the new tokens (B, P + T) =")  # (B, P+T)
        x = self.drop(self.wpe(self.wte(ids), offset=past_len))  # (B, T, D)
        presents = []
        for block, past in zip(self.blocks, past_kv or [None] * len(self.blocks)):
            out = block(x, key_padding_mask=padding, past_kv=past, use_cache=use_cache)
            x, present = out if use_cache else (out, None)
            presents.append(present)
        h = self.ln_f(x)  # (B, T, D)
        return (h, presents) if use_cache else h

    def lm_head(self, h: Tensor) -> Tensor:
        """z = h Eᵀ with the token-embedding table E (tied weights): (…, D) -> (…, V)."""
        return F.linear(h, self.wte.weight)

    def forward(self, input_ids, attention_mask=None, past_kv=None, use_cache: bool = False):
        """input_ids (B, T) -> logits (B, T, V), or (logits, presents) with ``use_cache`` (see
        :meth:`hidden_states` for the mask and the cache)."""
        out = self.hidden_states(input_ids, attention_mask, past_kv, use_cache)
        h, presents = out if use_cache else (out, None)
        logits = self.lm_head(h)  # (B, T, V)
        return (logits, presents) if use_cache else logits

    def loss(self, input_ids, attention_mask=None) -> Tensor:
        """Mean next-token cross-entropy  L = -(1/N) Σ_{b,t} log P(x_{b,t+1} | x_{b,≤t})  over ids (B, T).

        The model reads tokens 0…T-2 and position t predicts token t+1, so T tokens give T-1 predictions and
        T may be ``max_len + 1``: a window of max_len + 1 tokens trains every position, the last included
        (the last token is only a target; running the model on it would change no prediction). With an
        ``attention_mask`` (B, T) a target counts only when it and the token before it are real, so a
        right-padded row contributes exactly the terms of the same row without padding; N is the number of
        counted targets.
        """
        ids = self._ids(input_ids)
        if not 2 <= ids.shape[1] <= self.config.max_len + 1:
            raise ValueError(f"GPT.loss: needs 2 to max_len + 1 = {self.config.max_len + 1} tokens per row (the "
                             f"inputs and one more target), got shape {tuple(ids.shape)}")
        targets = ids[:, 1:].astype(np.int64)  # (B, T-1)
        input_mask = None
        if attention_mask is not None:
            real = real_token_mask(attention_mask, ids.shape, self.device)  # (B, T)
            targets[~(real[:, 1:] & real[:, :-1])] = F.IGNORE_INDEX
            input_mask = real[:, :-1]
        h = self.hidden_states(ids[:, :-1], input_mask)  # (B, T-1, D)
        logits = self.lm_head(h)  # (B, T-1, V): the predictions of tokens 1…T-1
        return F.cross_entropy(logits, Tensor(targets))  # IGNORE_INDEX targets are skipped

    # ------------------------------------------------------------------------------------ generation
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, seed: int | None = None, use_cache: bool = True,
                 eos_token_id: int | None = None) -> np.ndarray:
        """Continue ``prompt_ids`` (1-D ids) by up to ``max_new_tokens`` tokens -> 1-D int64 NumPy array of the
        prompt followed by the new ids (stops early after emitting ``eos_token_id``).

        Each step turns the last position's logits into a distribution with
        :func:`~minitx.models.sampling.next_token_probabilities`
        (temperature, then top-k, then top-p) and draws from it, or takes the argmax when ``greedy``. Draws come
        from ``numpy.random.default_rng(seed)`` when a seed is given (the same seed gives the same text), else
        from minitx's global generator (reproducible through :func:`minitx.manual_seed`).

        The model runs in eval mode under ``no_grad`` (its previous mode is restored afterwards). The context
        is the last ``max_len`` tokens. With ``use_cache`` only the newest token is fed at each step, against
        the cached keys and values; once the text is longer than ``max_len`` the learned positions run out, so
        every further step recomputes the cropped window of the last ``max_len`` tokens from scratch — exactly
        what ``use_cache=False`` does at every step, so both give the same tokens.
        """
        ids = self._prompt(prompt_ids)
        check_sampling_arguments(temperature, top_k, top_p, greedy)
        if not _is_int_at_least(max_new_tokens, 0):
            raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if eos_token_id is not None and not 0 <= eos_token_id < self.config.vocab_size:
            raise ValueError(f"generate: eos_token_id must lie in [0, {self.config.vocab_size}), got {eos_token_id}")
        rng = np.random.default_rng(seed) if seed is not None else backend.rng("cpu")
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                past = None
                for _ in range(max_new_tokens):
                    logits, past = self._next_logits(ids, past, use_cache)
                    ids.append(sample_next_token(logits, rng, temperature, top_k, top_p, greedy))
                    if ids[-1] == eos_token_id:
                        break
        finally:
            self.train(was_training)
        return np.array(ids, dtype=np.int64)

    def _prompt(self, prompt_ids) -> list[int]:
        prompt = prompt_ids.data if isinstance(prompt_ids, Tensor) else prompt_ids
        prompt = backend.to_numpy(prompt) if hasattr(prompt, "dtype") else np.asarray(prompt)
        if prompt.ndim != 1 or prompt.size == 0:
            raise ValueError(f"generate: prompt_ids must be a non-empty 1-D sequence of ids, got shape {prompt.shape}")
        prompt = _as_int_array(prompt, "prompt_ids", "cpu")
        if prompt.min() < 0 or prompt.max() >= self.config.vocab_size:
            raise ValueError(f"generate: prompt ids must lie in [0, {self.config.vocab_size}), got values in "
                             f"[{prompt.min()}, {prompt.max()}]")
        return [int(i) for i in prompt]

    def _next_logits(self, ids: list[int], past, use_cache: bool):
        """The logits (V,) float64 NumPy for the token after ``ids``, and the cache for the next step."""
        max_len = self.config.max_len
        if use_cache and past is not None and len(ids) <= max_len:
            feed = ids[-1:]  # the cache holds every earlier position
        else:
            feed, past = ids[-max_len:], None  # the whole (cropped) context
        x = backend.to_device(np.array([feed], dtype=np.int64), self.device)  # (1, T)
        out = self(x, past_kv=past, use_cache=use_cache)
        logits, past = out if use_cache else (out, None)  # (1, T, V)
        return backend.to_numpy(logits.data[0, -1]).astype(np.float64), past


# ---------------------------------------------------------------------------------- classification
class GPTForSequenceClassification(Module):
    """A GPT trunk and a linear ``score`` head (no bias, as in Hugging Face's GPT2ForSequenceClassification):
    ids (B, T) -> class logits (B, num_classes), read at each row's last real token:

        y_b = W_score · h^L_{b, last(b)},   last(b) = the index of the last 1 in attention_mask[b]

    Causal attention means only the last token has seen the whole text, so it summarises the sequence. With
    no mask every row's last token is T - 1. Right padding (``x x x 0 0``) is the intended layout: real tokens
    keep positions 0, 1, … and their hidden states equal those of the unpadded text. Left padding
    (``0 0 x x x``) also reads the right token, but the learned positions still count from the row's start, so
    the real tokens sit at shifted positions and the result differs from the unpadded text's.

    The trunk is ``gpt`` (a full :class:`GPT`; its tied output matrix adds no parameters and goes unused).
    """

    def __init__(self, config: GPTConfig, num_classes: int):
        super().__init__()
        if not _is_int_at_least(num_classes, 1):
            raise ValueError(f"GPTForSequenceClassification: num_classes must be an integer >= 1, got {num_classes!r}")
        self.config, self.num_classes = config, num_classes
        self.gpt = GPT(config)
        self.score = Linear(config.d_model, num_classes, bias=False)
        init.normal_(self.score.weight, std=INIT_STD)

    @classmethod
    def from_lm(cls, gpt: GPT, num_classes: int) -> "GPTForSequenceClassification":
        """A classifier whose trunk starts from a copy of ``gpt``'s weights (on its device and dtype) and a
        fresh ``score`` head. The weights are copied, not shared, so fine-tuning leaves the LM unchanged."""
        weight = gpt.wte.weight
        model = cls(gpt.config, num_classes).to(weight.device, weight.dtype)
        model.gpt.load_state_dict(gpt.state_dict())
        return model

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """input_ids (B, T), attention_mask (B, T) with 1 = real token -> logits (B, num_classes)."""
        h = self.gpt.hidden_states(input_ids, attention_mask)  # (B, T, D)
        return self.score(last_token_states(h, attention_mask))  # (B, D) -> (B, num_classes)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


_MOVED_TO_SAMPLING = {"apply_temperature", "top_k_filter", "top_p_filter", "next_token_probabilities"}


def __getattr__(name: str):
    """Old imports of the sampling functions, which now live in :mod:`minitx.models.sampling`, fail naming it."""
    if name in _MOVED_TO_SAMPLING or name == "softmax":
        new = "probabilities" if name == "softmax" else name
        raise ImportError(f"minitx.models.gpt.{name} has moved: use minitx.models.sampling.{new}")
    raise AttributeError(f"module 'minitx.models.gpt' has no attribute {name!r}")

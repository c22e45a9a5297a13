"""A Llama-style language model (Touvron et al., 2023): the GPT recipe with four newer parts.

    h⁰   = E[x_t]                                  (B, T, D)   no position table: positions enter as rotations
    hˡ   = DecoderBlock(hˡ⁻¹),  l = 1…L            pre-norm, causal, with
             norm      RMSNorm          y = x / √(mean(x²) + ε) · γ
             attention grouped-query    H query heads share H_kv key/value heads
             positions rotary (RoPE)    q and k of position m turned by the angles m·ω_i, ω_i = base^(-2i/d)
             FFN       SwiGLU           (SiLU(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ, no biases anywhere
    z_t  = RMSNorm_f(h^L_t) Wᵀ                     (B, T, V)   W = E when the embeddings are tied

Every part is a library block (:class:`~minitx.nn.DecoderBlock` configured with ``norm=RMSNorm``,
``rotary=RotaryEmbedding``, ``num_kv_heads``, ``gated=True``, ``bias=False``); this module only stacks them.
SmolLM2-135M is one: L = 30, D = 576, H = 9, H_kv = 3 (d = 64), SwiGLU width 1536, base 100000, tied E.

The KV cache of each block holds the keys already rotated to their positions, H_kv heads of them (3 instead of
9 for SmolLM2: a third of a multi-head cache). Parameter names follow Hugging Face's ``LlamaForCausalLM``
after one renaming table (see :func:`minitx.hub.load_gguf_llama`); the rotary layout is Hugging Face's
(rotate-half), so q/k weights from a GGUF file are un-permuted on loading.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import DecoderBlock, Embedding, Linear, Module, ModuleList, RMSNorm, RotaryEmbedding, init, kv_cache_length
from ..tensor import Tensor, no_grad
from .gpt import last_token_states, real_token_mask
from .llama_decode import LlamaDecoder
from .sampling import check_sampling_arguments, sample_next_token


def right_padded_real_mask(attention_mask, shape: tuple, device: str):
    """attention_mask (B, T), 1 = real token, 0 = padding -> bool (B, T), True = real; raises ValueError when a
    real token follows padding in some row (the Llama models here take right padding only)."""
    real = real_token_mask(attention_mask, shape, device)  # (B, T)
    if (real[:, 1:] & ~real[:, :-1]).any():
        raise ValueError("Llama: attention_mask must pad on the right (1 … 1 0 … 0 in every row); a row has a real "
                         "token after padding")
    return real


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@dataclass
class LlamaConfig:
    """Sizes of a Llama-style model (defaults: none; see :data:`SMOLLM2_135M` for a real one).

    ``max_len`` is the context the model was trained for: rotary positions have no table, so nothing stops a
    longer input except that the model never learned it, and minitx refuses one.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    dim_feedforward: int
    max_len: int
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "dim_feedforward", "max_len"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"LlamaConfig: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"LlamaConfig: d_model {self.d_model} must split into num_heads {self.num_heads} "
                             f"heads of an even size (rotary turns pairs of features)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                             f"{self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


SMOLLM2_135M = LlamaConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3,
                           dim_feedforward=1536, max_len=8192, rms_norm_eps=1e-5, rope_base=100000.0,
                           tie_embeddings=True)


class Llama(Module):
    """A Llama-style causal language model: ids (B, T) -> next-token logits (B, T, V); see the module docstring.

    Sub-modules: ``embed_tokens``, ``blocks`` (``num_layers`` :class:`~minitx.nn.DecoderBlock`), ``norm`` (the
    final RMSNorm), and ``lm_head`` only when the embeddings are not tied. Weights start as the blocks'
    defaults; the model is meant to be loaded (:func:`minitx.hub.load_smollm2`). A tied model may still be
    given an ``lm_head`` (a quantised copy of the embedding, for speed); it is then used for the output.
    """

    def __init__(self, config: LlamaConfig, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.d_model, dtype=dtype, device=device)
        rotary = RotaryEmbedding(config.head_dim, config.rope_base)  # no parameters: one serves every block
        self.blocks = ModuleList([
            DecoderBlock(config.d_model, config.num_heads, config.dim_feedforward, 0.0, "silu", config.rms_norm_eps,
                         dtype, device, norm=RMSNorm, num_kv_heads=config.num_kv_heads, rotary=rotary,
                         gated=True, bias=False)
            for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps, dtype=dtype, device=device)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, bias=False,
                                                                  dtype=dtype, device=device)

    @property
    def device(self) -> str:
        return self.embed_tokens.weight.device

    @property
    def hidden_size(self) -> int:
        """D, the width of the hidden states (what :class:`~minitx.models.TaskAdapter` reads)."""
        return self.config.d_model

    def forward(self, input_ids, past_kv=None, use_cache: bool = False):
        """input_ids (B, T) -> logits (B, T, V), or (logits, presents) with ``use_cache``.

        ``past_kv``: the ``presents`` of an earlier call, one (keys, values) pair per block, each
        (B, H_kv, P, d); the new tokens then sit at positions P … P + T - 1.
        """
        out = self.hidden_states(input_ids, past_kv=past_kv, use_cache=use_cache)
        h, presents = out if use_cache else (out, None)  # (B, T, D)
        logits = self.output_logits(h)  # (B, T, V)
        return (logits, presents) if use_cache else logits

    def output_logits(self, h: Tensor) -> Tensor:
        """z = h Wᵀ, the output layer alone: final hidden states (…, D) -> logits (…, V) (W = E when tied)."""
        return F.linear(h, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def hidden_states(self, input_ids, attention_mask=None, past_kv=None, use_cache: bool = False):
        """The final hidden states RMSNorm_f(h^L) (B, T, D), or (states, presents) with ``use_cache``.

        ``attention_mask`` (B, T), 1 = real token, 0 = padding, must pad on the right (``x x x 0 0``): causal
        attention keeps later positions out of every earlier one, so the real tokens' states are those of the
        unpadded text: the mask is checked, never applied. (Left padding would shift the real tokens' rotary
        positions: it is refused.)
        """
        ids = self._ids(input_ids)
        if attention_mask is not None:
            right_padded_real_mask(attention_mask, ids.shape, self.device)
        past_len = kv_cache_length(past_kv, len(self.blocks), ids.shape[0], "Llama")
        if past_len + ids.shape[1] > self.config.max_len:
            raise ValueError(f"Llama: {past_len} cached + {ids.shape[1]} new tokens exceed the context of "
                             f"max_len={self.config.max_len} tokens")
        x = self.embed_tokens(ids)  # (B, T, D)
        presents = []
        for block, past in zip(self.blocks, past_kv or [None] * len(self.blocks)):
            out = block(x, past_kv=past, use_cache=use_cache)
            x, present = out if use_cache else (out, None)
            presents.append(present)
        h = self.norm(x)  # (B, T, D)
        return (h, presents) if use_cache else h

    def encode(self, input_ids, attention_mask=None) -> Tensor:
        """:meth:`hidden_states` (B, T, D) under the name :class:`~minitx.models.TaskAdapter` calls."""
        return self.hidden_states(input_ids, attention_mask)

    def _ids(self, input_ids):
        ids = input_ids.data if isinstance(input_ids, Tensor) else input_ids
        ids = ids if hasattr(ids, "dtype") else np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"Llama: input_ids must be integers of shape (B, T) with T >= 1, got dtype "
                             f"{ids.dtype} shape {tuple(ids.shape)}")
        return backend.to_device(ids, self.device)

    # ------------------------------------------------------------------------------------ generation
    def stream(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, seed: int | None = None,
               eos_token_id: int | None = None, fast: bool = True) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` new token ids after ``prompt_ids`` (1-D), one as soon as it is chosen.

        The prompt runs once; every later step feeds only the newest token against the KV cache: with
        ``fast`` (the default, where the model's parts allow it) through the array-level decode step of
        :class:`~minitx.models.llama_decode.LlamaDecoder` (preallocated cache, no Tensor layer), else through
        the layers (``self(token, past_kv=…, use_cache=True)``, the path to read); both give the same logits
        within float32 rounding. Each token
        is the argmax (``greedy``) or a draw from softmax(filter(z/τ)) with top-k then top-p
        (:func:`~minitx.models.sampling.sample_next_token`), from ``numpy.random.default_rng(seed)`` when a seed is
        given, else from minitx's global generator. Stops after yielding ``eos_token_id``, or when the context
        (``max_len``) is full. Runs in eval mode under ``no_grad``.

        Raises:
            ValueError: a bad sampling setting, an empty prompt, ids outside the vocabulary, or a prompt longer
                than the context — before anything runs.
        """
        ids = self._prompt(prompt_ids)
        check_sampling_arguments(temperature, top_k, top_p, greedy)
        if not (isinstance(max_new_tokens, numbers.Integral) and max_new_tokens >= 0):
            raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        rng = np.random.default_rng(seed) if seed is not None else backend.rng("cpu")
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                steps = min(max_new_tokens, self.config.max_len - len(ids) + 1)
                decoder = LlamaDecoder(self, len(ids) + steps) if fast and LlamaDecoder.supports(self) else None
                feed, past = ids, None
                for _ in range(steps):
                    x = backend.to_device(np.array([feed], dtype=np.int64), self.device)  # (1, T)
                    if decoder is not None:  # the prompt through the layers, then the array-level decode step
                        z = decoder.prefill(x) if past is None else decoder.step(x[:, 0])  # (1, V)
                        past = decoder
                    else:
                        logits, past = self(x, past_kv=past, use_cache=True)  # (1, T, V)
                        z = logits.data[:, -1]  # (1, V)
                    token = sample_next_token(backend.to_numpy(z[0]).astype(np.float64), rng, temperature, top_k,
                                              top_p, greedy)
                    yield token
                    if token == eos_token_id:
                        return
                    feed = [token]
        finally:
            self.train(was_training)

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, seed: int | None = None,
                 eos_token_id: int | None = None, fast: bool = True) -> np.ndarray:
        """The prompt followed by the new ids, as a 1-D int64 NumPy array (see :meth:`stream`)."""
        new = list(self.stream(prompt_ids, max_new_tokens, temperature, top_k, top_p, greedy, seed, eos_token_id,
                               fast))
        return np.array(self._prompt(prompt_ids) + new, dtype=np.int64)

    def _prompt(self, prompt_ids) -> list[int]:
        prompt = prompt_ids.data if isinstance(prompt_ids, Tensor) else prompt_ids
        prompt = backend.to_numpy(prompt) if hasattr(prompt, "dtype") else np.asarray(prompt)
        if prompt.ndim != 1 or prompt.size == 0 or prompt.dtype.kind not in "iu":
            raise ValueError(f"generate: prompt_ids must be a non-empty 1-D sequence of ids, got dtype "
                             f"{prompt.dtype} shape {prompt.shape}")
        if prompt.min() < 0 or prompt.max() >= self.config.vocab_size:
            raise ValueError(f"generate: prompt ids must lie in [0, {self.config.vocab_size}), got values in "
                             f"[{prompt.min()}, {prompt.max()}]")
        if prompt.size > self.config.max_len:
            raise ValueError(f"generate: the prompt has {prompt.size} tokens, longer than the context of "
                             f"{self.config.max_len}")
        return [int(i) for i in prompt]


def perplexity(model: Llama, ids, window: int = 512) -> tuple[float, int]:
    """Perplexity exp(-(1/N) Σ_t log P(x_{t+1} | x_≤t)) of the 1-D ids under ``model`` -> (perplexity, N).

    The ids are cut into consecutive windows of ``window`` tokens, each run on its own (its first token is
    context only; a window of one token predicts nothing), so N = len(ids) minus the number of windows.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size < 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"perplexity: needs a 1-D sequence of at least 2 token ids, got dtype {ids.dtype} "
                         f"shape {ids.shape}")
    if not _positive_int(window) or window < 2 or window > model.config.max_len:
        raise ValueError(f"perplexity: window must be an integer in [2, {model.config.max_len}], got {window!r}")
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, ids.size, window):
                chunk = ids[start:start + window]
                if chunk.size < 2:
                    continue
                logits = model(chunk[None, :-1])  # (1, n-1, V): predictions of tokens 1 … n-1
                nll = F.cross_entropy(logits[0], Tensor(chunk[1:].astype(np.int64)))  # mean over n-1 targets
                total += float(nll.item()) * (chunk.size - 1)
                count += chunk.size - 1
    finally:
        model.train(was_training)
    return float(np.exp(total / count)), count


# -------------------------------------------------------------------------------------- chat template
def chatml_prompt(messages: list[dict[str, str]], default_system: str | None = None,
                  add_generation_prompt: bool = True) -> str:
    """ChatML, the chat format of SmolLM2-Instruct: each message as

        <|im_start|>{role}\\n{content}<|im_end|>\\n

    and, with ``add_generation_prompt``, ``<|im_start|>assistant\\n`` after the last one, where the model's
    answer begins (it ends its answer with ``<|im_end|>``). When the first message is not from ``"system"``
    and a ``default_system`` text is given, a system message with it goes first (SmolLM2's template does
    this). ``messages``: dicts with ``"role"`` (``"system"``, ``"user"``, ``"assistant"``) and ``"content"``.
    """
    parts = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise ValueError(f"chatml_prompt: message {k} must be a dict with 'role' and 'content', got {message!r}")
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# -------------------------------------------------------------------------------------- classification
class LlamaForSequenceClassification(Module):
    """A Llama trunk and a linear ``score`` head (no bias) read at each row's last real token, as
    :class:`~minitx.models.GPTForSequenceClassification` does for GPT: ids (B, T) -> class logits (B, C),

        y_b = W_score · h^L_{b, last(b)},   last(b) = the index of the last 1 in attention_mask[b].

    Causal attention means only the last token has seen the whole text. Padding goes on the right and its
    token (``pad_token_id``, e.g. the tokenizer's end-of-sequence id) is never read. Sub-modules: ``llama``
    (a :class:`Llama`; its output matrix goes unused) and ``score`` ~ N(0, 0.02²). Fine-tune it whole, or
    freeze the trunk and train adapters (:func:`minitx.nn.apply_lora`) and ``score``.
    """

    def __init__(self, llama: Llama, num_classes: int, pad_token_id: int | None = None):
        super().__init__()
        if not _positive_int(num_classes) or num_classes < 2:
            raise ValueError(f"LlamaForSequenceClassification: num_classes must be an integer >= 2, got "
                             f"{num_classes!r}")
        if pad_token_id is not None and not 0 <= pad_token_id < llama.config.vocab_size:
            raise ValueError(f"LlamaForSequenceClassification: pad_token_id must lie in [0, "
                             f"{llama.config.vocab_size}), got {pad_token_id}")
        self.num_classes, self.pad_token_id = num_classes, pad_token_id
        self.llama = llama
        weight = llama.embed_tokens.weight
        self.score = Linear(llama.config.d_model, num_classes, bias=False, dtype=weight.dtype, device=weight.device)
        init.normal_(self.score.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """input_ids (B, T), attention_mask (B, T) with 1 = real token (right padding) -> logits (B, C)."""
        h = self.llama.hidden_states(input_ids, attention_mask)  # (B, T, D)
        return self.score(self.last_token_states(h, attention_mask))  # (B, C)

    last_token_states = staticmethod(last_token_states)  # h (B, T, D) -> (B, D), as GPT's classifier reads it

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, pad_token_id={self.pad_token_id}"

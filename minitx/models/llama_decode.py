"""Generating with a Llama, fast: the one-token decode step on arrays, against a preallocated KV cache.

Generating a token runs the whole model on ONE new position per sequence. The arithmetic of that step is
small (SmolLM2-135M: 30 blocks of products by a single row, bound by reading the weights from memory), so the
cost of the Tensor layer around it becomes a large share of the step: the layer path
(``model(ids, past_kv=…, use_cache=True)``) makes about 1,000 op calls a step, each wrapping its inputs as
Tensors, building a Function, checking devices, and concatenating every block's cache with the new keys and
values (a copy of the whole cache, every step). :class:`LlamaDecoder` runs the same step with three changes,
none in the mathematics:

1. Arrays, no graph. Each block calls the array-level ``forward`` of the very ops the layers use
   (``ops.RMSNorm``, ``ops.Linear`` / ``ops.fused.QuantizedLinear``, ``ops.Rotary``, ``ops.SiLU``), so the
   equations are written once, in :mod:`minitx.ops`; generation never differentiates, so nothing is recorded.
2. Preallocated cache. Each block's keys and values live in (B, H_kv, capacity, d) buffers; the new
   position's rotated key and its value are written in place at index P (the cache length), and attention
   reads the first P + 1 positions as views: no copy of the cache per step.
3. Grouped-query attention of one query per sequence, without repeating the keys and values for the g query
   heads of a group: the queries are viewed as (B, H_kv, g, d) and each group meets its own key/value head,

       S = scale · q Kᵀ  (B, H_kv, g, P+1),   O = softmax(S) V  (B, H_kv, g, d),

   no mask needed (the newest position may see every cached one).

The prompt still runs through the layer path (:meth:`LlamaDecoder.prefill`: the fused attention kernel,
products of many rows), up to the output layer, which runs on the last position only (the logits of the
others are not needed to generate); its keys and values are then copied into the buffers once. tests/test_smollm2.py
checks that the decode step's logits equal the layer path's, for float32 and Q4_1 weights.

Only the parts this module knows are taken (bias-free or biased :class:`~minitx.nn.Linear`, the quantised
layers, RMSNorm, a rotary embedding, the (quantised) gated FFN); a model with other parts (LoRA adapters, say)
is refused by :meth:`LlamaDecoder.supports`, and :meth:`~minitx.models.llama.Llama.stream` then keeps to the
layer path.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, ops
from ..nn import GatedFeedForward, Linear, RMSNorm, RotaryEmbedding
from ..nn.quantized import Q4_1Linear, Q8_0Linear, QuantizedGatedFeedForward
from ..nn.rotary import rotary_cos_sin
from ..ops.fused import QuantizedLinear
from ..tensor import no_grad


def _product(layer, x):
    """x Wᵀ (+ b) for x (N, in) -> (N, out), on arrays, with the op the layer itself calls."""
    if isinstance(layer, Q4_1Linear):
        return QuantizedLinear().forward(x, layer.scale.data, layer.minimum.data, layer.packed.data, format="q4_1")
    if isinstance(layer, Q8_0Linear):
        return QuantizedLinear().forward(x, layer.scale.data, layer.quants.data, format="q8_0")
    bias = None if layer.bias is None else layer.bias.data
    return ops.Linear().forward(x, layer.weight.data, bias)


def _rms_norm(norm: RMSNorm, x):
    """RMSNorm of x (N, D) on arrays (``ops.RMSNorm``'s forward)."""
    return ops.RMSNorm().forward(x, norm.weight.data, normalized_ndim=len(norm.normalized_shape), eps=norm.eps)


def _is_projection(layer) -> bool:
    return type(layer) in (Linear, Q4_1Linear)


_ACTIVATIONS = {"silu": ops.SiLU, "gelu": ops.GELU, "relu": ops.ReLU}  # the gated FFN's, by name


class LlamaDecoder:
    """The generation state of a :class:`~minitx.models.llama.Llama` run on B sequences: the KV cache in
    preallocated buffers and the array-level decode step (see the module docstring).

    ``capacity``: the positions to reserve (prompt + new tokens); the buffers double when a step needs more.
    Use: ``logits = decoder.prefill(prompt_ids)`` (B, T) -> last position's logits (B, V), then
    ``logits = decoder.step(ids)`` with one new id per sequence (B,) -> (B, V), as many times as wanted.
    """

    def __init__(self, model, capacity: int):
        if not self.supports(model):
            raise ValueError("LlamaDecoder: the model has parts the array-level decode step does not know "
                             "(only Linear, Q4_1Linear, RMSNorm, rotary and the gated FFN); use the layer path")
        self.model, self.capacity = model, max(int(capacity), 1)
        self.length = 0  # P, the positions held
        self.keys: list = []  # per block, (B, H_kv, capacity, d)
        self.values: list = []

    @staticmethod
    def supports(model) -> bool:
        """Whether every block is made of the parts the decode step knows (see the module docstring), with one
        rotary setting for all."""
        first = model.blocks[0].attn.rotary
        if not isinstance(first, RotaryEmbedding):
            return False
        norms = [model.norm]
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            if not (isinstance(mlp, (GatedFeedForward, QuantizedGatedFeedForward)) and mlp.activation in _ACTIVATIONS):
                return False
            projections = [attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, mlp.gate_proj, mlp.up_proj,
                           mlp.down_proj]
            rotary = attn.rotary
            if not (all(_is_projection(p) for p in projections) and isinstance(rotary, RotaryEmbedding)
                    and (rotary.head_dim, rotary.base, rotary.interleaved)
                    == (first.head_dim, first.base, first.interleaved)):
                return False
            norms += [block.ln_1, block.ln_2]
        if not all(type(norm) is RMSNorm and norm.weight is not None for norm in norms):
            return False
        return model.lm_head is None or type(model.lm_head) in (Linear, Q8_0Linear, Q4_1Linear)

    def prefill(self, input_ids):
        """Run the prompt (B, T) through the layer path, keep its keys and values -> logits (B, V) of the last
        position (the only ones generation reads, so the output layer runs on that position alone)."""
        with no_grad():
            h, presents = self.model.hidden_states(input_ids, use_cache=True)  # (B, T, D)
            logits = self.model.output_logits(h[:, -1])  # (B, V)
        steps = presents[0][0].shape[2]
        self.capacity = max(self.capacity, steps)
        self.keys, self.values = [], []
        for keys, values in presents:  # (B, H_kv, T, d) each
            xp = backend.get_array_module(keys.data)
            for store, new in ((self.keys, keys.data), (self.values, values.data)):
                buffer = xp.empty(new.shape[:2] + (self.capacity,) + new.shape[3:], dtype=new.dtype)
                buffer[:, :, :steps] = new
                store.append(buffer)
        self.length = steps
        return logits.data

    def _grow(self) -> None:
        """Double the buffers' capacity (a step found them full)."""
        self.capacity *= 2
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = backend.get_array_module(old).empty(old.shape[:2] + (self.capacity,) + old.shape[3:],
                                                          dtype=old.dtype)
                new[:, :, :self.length] = old[:, :, :self.length]
                store[i] = new

    def step(self, ids):
        """One new id per sequence (B,) at position P -> next-token logits (B, V); the cache grows by one."""
        model, config = self.model, self.model.config
        if not self.keys:
            raise RuntimeError("LlamaDecoder.step: call prefill(prompt_ids) first")
        if self.length + 1 > config.max_len:
            raise ValueError(f"LlamaDecoder: the context of max_len={config.max_len} tokens is full")
        ids = np.asarray(backend.to_numpy(ids)).reshape(-1)  # (B,)
        batch = self.keys[0].shape[0]
        if ids.dtype.kind not in "iu" or ids.shape != (batch,) or ids.min() < 0 or ids.max() >= config.vocab_size:
            raise ValueError(f"LlamaDecoder.step: expected one id in [0, {config.vocab_size}) per sequence, "
                             f"{batch} in all; got dtype {ids.dtype}, shape {ids.shape}")
        if self.length == self.capacity:
            self._grow()
        weight = model.embed_tokens.weight.data
        xp = backend.get_array_module(weight)
        x = weight[backend.to_device(ids, backend.device_of(weight))]  # (B, D)
        heads, kv_heads, d = config.num_heads, config.num_kv_heads, config.head_dim
        rotary = model.blocks[0].attn.rotary
        cos, sin = (xp.asarray(a, dtype=x.dtype) for a in rotary_cos_sin([self.length], d, rotary.base))  # (1, d/2)
        p, scale = self.length, x.dtype.type(1 / math.sqrt(d))
        for block, keys, values in zip(model.blocks, self.keys, self.values):
            attn = block.attn
            h = _rms_norm(block.ln_1, x)  # (B, D)
            q = ops.Rotary().forward(_product(attn.q_proj, h).reshape(batch, heads, d), cos, sin,
                                     rotary.interleaved)  # (B, H, d)
            keys[:, :, p] = ops.Rotary().forward(_product(attn.k_proj, h).reshape(batch, kv_heads, d), cos, sin,
                                                 rotary.interleaved)  # (B, H_kv, d) into position P
            values[:, :, p] = _product(attn.v_proj, h).reshape(batch, kv_heads, d)
            k, v = keys[:, :, :p + 1], values[:, :, :p + 1]  # (B, H_kv, P+1, d), views
            q = q.reshape(batch, kv_heads, heads // kv_heads, d)  # (B, H_kv, g, d): group j's query heads
            scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, H_kv, g, P+1)
            attended = ops.Softmax().forward(scores, axis=-1) @ v  # (B, H_kv, g, d)
            x = x + _product(attn.out_proj, attended.reshape(batch, heads * d))  # (B, D)
            h = _rms_norm(block.ln_2, x)
            mlp = block.mlp
            act = _ACTIVATIONS[mlp.activation]().forward
            x = x + _product(mlp.down_proj, act(_product(mlp.gate_proj, h)) * _product(mlp.up_proj, h))
        self.length += 1
        h = _rms_norm(model.norm, x)  # (B, D)
        if model.lm_head is None:
            return ops.Linear().forward(h, weight)  # (B, V), tied output
        return _product(model.lm_head, h)

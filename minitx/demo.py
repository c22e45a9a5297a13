"""``minitx demo``: every workflow of the source texts on the built-in data, in a few minutes on a laptop CPU.

Pre-train a tiny BERT (MLM + sentence order on the ordered documents, MLM also on the unlabelled training
sentences of the sentiment task) → fine-tune a TaskAdapter on its frozen encoder → train a tiny GPT and
sample from it → fine-tune a GPT sentiment classifier; then print a summary table and write the loss curves
(PNG) and histories (CSV) to the output folder.
"""

from __future__ import annotations

import os
import time

from . import backend, distributed
from .data import corpus_text, ordered_documents, sentiment_sentences
from .models import BertConfig, GPTConfig
from .pipelines import (finetune_adapter, finetune_gpt_classifier, generate_text, labelled_splits, pretrain_bert,
                        train_gpt, train_tokenizers)

SIZES = {
    # name: (documents, sentences, BERT steps, adapter steps, GPT steps, classifier steps, d_model, layers)
    "full": dict(documents=2000, sentences=3000, bert_steps=800, adapter_steps=1500, gpt_steps=400,
                 classifier_steps=200, d_model=64, layers=2),
    "quick": dict(documents=300, sentences=600, bert_steps=30, adapter_steps=30, gpt_steps=30,
                  classifier_steps=20, d_model=32, layers=1),
}


def run_demo(out_dir: str = "minitx_out/demo", device: str = "cpu", size: str = "full", seed: int = 0,
             progress: bool = True) -> dict:
    """Run the four stages, print a summary, write plots and CSVs to ``out_dir``; returns the metrics.
    Under ``mpiexec -n N`` every stage trains data-parallel and rank 0 alone prints and writes."""
    s = SIZES[size]
    writes = distributed.world().is_main
    if writes:
        os.makedirs(out_dir, exist_ok=True)
    backend.manual_seed(seed)
    started = time.perf_counter()

    documents = ordered_documents(s["documents"], seed=seed)
    sentences, labels = sentiment_sentences(s["sentences"], seed=seed)
    splits = labelled_splits(sentences, labels, seed=seed)
    wordpiece, bpe = train_tokenizers(documents, sentences, wordpiece_vocab=800, bpe_vocab=600)
    d, layers = s["d_model"], s["layers"]

    results = {}
    bert = pretrain_bert(documents, wordpiece, BertConfig(
        vocab_size=wordpiece.vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * d, max_position_embeddings=128, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0), steps=s["bert_steps"], lr=3e-3, device=device, seed=seed,
        progress=progress,
        texts=splits["train"][0])
    results["bert"] = bert
    results["adapter"] = finetune_adapter(bert.model.bert, wordpiece, splits, steps=s["adapter_steps"],
                                          device=device, seed=seed, progress=progress)
    gpt = train_gpt(corpus_text(s["documents"], seed=seed), bpe, GPTConfig(
        vocab_size=bpe.vocab_size, max_len=64, d_model=d, num_heads=4, num_layers=layers, dim_feedforward=4 * d,
        dropout=0.0), steps=s["gpt_steps"], device=device, seed=seed, progress=progress)
    results["gpt"] = gpt
    sample = generate_text(gpt.model, bpe, "First,", max_new_tokens=40, temperature=0.8, top_k=20, seed=seed)
    results["classifier"] = finetune_gpt_classifier(gpt.model, bpe, splits, steps=s["classifier_steps"],
                                                    device=device, seed=seed, progress=progress)
    elapsed = time.perf_counter() - started
    metrics = {name: result.metrics for name, result in results.items()}
    metrics["sample"] = sample
    metrics["seconds"] = elapsed
    if not writes:
        return metrics
    for name, result in results.items():
        result.history.plot(os.path.join(out_dir, f"{name}_loss.png"), title=f"{name}: training loss")
        result.history.to_csv(os.path.join(out_dir, f"{name}_history.csv"))
    print(summary_table(metrics, out_dir))
    return metrics


def summary_table(m: dict, out_dir: str) -> str:
    """The demo's numbers, each beside what chance (or a uniform guess) would give."""
    rows = [
        ("BERT pre-training", "held-out MLM loss", f"{m['bert']['mlm_loss']:.3f}",
         f"ln V = {m['bert']['uniform_loss']:.3f}"),
        ("", "held-out sentence-order accuracy", f"{m['bert']['sop_acc']:.1%}", "chance 50%"),
        ("TaskAdapter (frozen BERT)", "test accuracy", f"{m['adapter']['test_acc']:.1%}", "chance 50%"),
        ("GPT language model", "held-out next-token loss", f"{m['gpt']['val_loss']:.3f}",
         f"ln V = {m['gpt']['uniform_loss']:.3f}"),
        ("GPT classifier", "test accuracy", f"{m['classifier']['test_acc']:.1%}", "chance 50%"),
    ]
    widths = [max(len(r[i]) for r in rows + [("stage", "metric", "value", "reference")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [line(("stage", "metric", "value", "reference")), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    out += ["", f"GPT sample: {m['sample']!r}", f"plots and histories: {out_dir}", f"time: {m['seconds']:.0f} s"]
    return "\n".join(out)

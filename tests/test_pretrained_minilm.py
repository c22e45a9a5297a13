"""Parity with Hugging Face ``transformers`` on the real all-MiniLM-L6-v2 checkpoint.

The same texts go through minitx (its own WordPiece tokeniser, :func:`minitx.hub.load_pretrained`, :func:`embed`) and
through ``transformers``' BertModel in float32, eval mode; hidden states and sentence embeddings must agree
to 1e-4. Skipped (with the reason) only when the checkpoint cannot be fetched or transformers is missing.
"""

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the checkpoint is a local folder; never reach for the Hub
torch = pytest.importorskip("torch", reason="torch is the oracle's backend (pip install 'minitx[test]')")
transformers = pytest.importorskip("transformers", reason="transformers is the oracle (pip install 'minitx[test]')")

from helpers import fetched_or_skip  # noqa: E402

from minitx import no_grad  # noqa: E402
from minitx.data.fetch import minilm_path  # noqa: E402
from minitx.embed import embed  # noqa: E402
from minitx.hub import load_pretrained  # noqa: E402

TEXTS = [
    "A gripping, beautifully acted drama.",
    "The plot is a mess; I walked out after 40 minutes!",
    "Naïve café owners in Zürich can't stop smiling :)",
    "It's",
    "Unbelievably tedious -- the dialogue clunks, the pacing drags, and the twist (if you can call it that) "
    "arrives far too late to matter to anyone still awake in the theatre.",
    "GPT-2 and BERT-base differ: one is causal, the other bidirectional.",
]
ATOL = 1e-4


@pytest.fixture(scope="module")
def minilm():
    folder = fetched_or_skip(minilm_path, "all-MiniLM-L6-v2")
    model, tokenizer = load_pretrained(folder)
    hf_model = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer, hf_model, hf_tokenizer


def hf_hidden(hf_model, batch):
    with torch.no_grad():
        out = hf_model(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out.last_hidden_state.numpy()


def test_tokenizer_ids_match_hugging_face(minilm):
    _, tokenizer, _, hf_tokenizer = minilm
    ours = tokenizer.encode_batch(TEXTS, max_length=256)
    theirs = hf_tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_hidden_states_match_on_a_padded_batch(minilm):
    model, tokenizer, hf_model, _ = minilm
    batch = tokenizer.encode_batch(TEXTS, max_length=256)
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding"
    with no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()  # (B, T, D)
    theirs = hf_hidden(hf_model, batch)
    real = batch["attention_mask"].astype(bool)  # padded positions are not compared: no one reads them
    diff = np.abs(ours[real] - theirs[real]).max()
    assert diff <= ATOL, f"max |minitx - transformers| over real tokens = {diff:.2e}"


def test_sentence_pair_with_token_types_matches(minilm):
    model, tokenizer, hf_model, _ = minilm
    batch = tokenizer.encode_batch(TEXTS[:3], texts_pair=TEXTS[3:], max_length=256)
    assert (batch["token_type_ids"] == 1).any()
    with no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    theirs = hf_hidden(hf_model, batch)
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= ATOL


def test_sentence_embeddings_match(minilm):
    model, tokenizer, hf_model, hf_tokenizer = minilm
    ours = embed(TEXTS, model, tokenizer, batch_size=4)  # two batches, each padded to its longest text
    enc = hf_tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = hf_model(**enc).last_hidden_state  # (B, T, D)
    mask = enc["attention_mask"][:, :, None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # sentence-transformers' Pooling (mean)
    theirs = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()  # and its Normalize module
    assert ours.shape == (len(TEXTS), 384)
    diff = np.abs(ours - theirs).max()
    assert diff <= ATOL, f"max |minitx - sentence-transformers recipe| = {diff:.2e}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

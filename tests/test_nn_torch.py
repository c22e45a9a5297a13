"""Layers against PyTorch with copied weights: outputs and every parameter gradient (float32 and float64)."""

from __future__ import annotations

import numpy as np
import pytest

from minitx import Tensor, nn
from make_fixtures import minitx_names

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def copy_weights(ours: nn.Module, theirs) -> None:
    ours.load_state_dict(minitx_names({k: v.detach().numpy() for k, v in theirs.state_dict().items()}))


def compare(ours, theirs, inputs: list, dtype, ours_kwargs: dict, theirs_kwargs: dict, keep=None):
    """Run both on the same inputs with a random cotangent; compare outputs, input grads and parameter grads.

    ``keep`` (bool, output-shaped without the last axis) selects the positions compared and back-propagated.
    """
    rng = np.random.default_rng(1)
    ours_in = [Tensor(x.astype(dtype), requires_grad=True) for x in inputs]
    theirs_in = [torch.tensor(x.astype(dtype), requires_grad=True) for x in inputs]
    out = ours(*ours_in, **ours_kwargs)
    ref = theirs(*theirs_in, **theirs_kwargs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    cotangent = rng.standard_normal(out.shape).astype(dtype)
    if keep is not None:
        cotangent[~keep] = 0
    out.backward(cotangent)
    ref.backward(torch.tensor(cotangent))
    tol = TOL[dtype]
    got, want = out.numpy(), ref.detach().numpy()
    if keep is not None:
        got, want = got[keep], want[keep]
    np.testing.assert_allclose(got, want, **tol)
    for a, b in zip(ours_in, theirs_in):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), **tol)
    theirs_grads = minitx_names({n: p.grad.numpy() for n, p in theirs.named_parameters()})
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, theirs_grads[name], err_msg=name, **tol)


def padding(batch: int, steps: int) -> np.ndarray:
    mask = np.zeros((batch, steps), dtype=bool)
    mask[1, steps - 2:] = True
    return mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masking", ["none", "key_padding", "causal", "both"])
def test_multi_head_attention_matches_torch(dtype, masking):
    torch.manual_seed(0)
    d, h, b, t = 16, 4, 3, 5
    theirs = torch.nn.MultiheadAttention(d, h, batch_first=True, dtype=TORCH_DTYPE[dtype])
    ours = nn.MultiHeadAttention(d, h).to(dtype=dtype)
    copy_weights(ours, theirs)
    kpm = padding(b, t) if masking in ("key_padding", "both") else None
    causal = masking in ("causal", "both")
    causal_mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else None
    x = np.random.default_rng(0).standard_normal((b, t, d))
    compare(ours, theirs, [x, x, x], dtype,
            dict(key_padding_mask=kpm, is_causal=causal),
            dict(key_padding_mask=None if kpm is None else torch.tensor(kpm), attn_mask=causal_mask,
                        need_weights=False))


def test_attention_weights_match_torch_per_head():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    ours = nn.MultiHeadAttention(8, 2).double()
    copy_weights(ours, theirs)
    q, kv = np.random.default_rng(0).standard_normal((2, 3, 8)), np.random.default_rng(1).standard_normal((2, 4, 8))
    kpm = np.array([[False] * 4, [False, False, True, True]])
    out, weights = ours(Tensor(q), Tensor(kv), Tensor(kv), key_padding_mask=kpm, need_weights=True)
    ref, ref_weights = theirs(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), key_padding_mask=torch.tensor(kpm),
                              average_attn_weights=False)
    assert weights.shape == (2, 2, 3, 4)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), ref_weights.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(dtype, norm_first, activation):
    torch.manual_seed(0)
    d, h, f, b, t = 16, 4, 32, 3, 6
    theirs = torch.nn.TransformerEncoderLayer(d, h, f, dropout=0.0, activation=activation, batch_first=True,
                                              norm_first=norm_first, dtype=TORCH_DTYPE[dtype])
    ours = nn.TransformerEncoderLayer(d, h, f, dropout=0.0, activation=activation, norm_first=norm_first)
    copy_weights(ours.to(dtype=dtype), theirs)
    kpm = padding(b, t)
    x = np.random.default_rng(0).standard_normal((b, t, d))
    compare(ours, theirs, [x], dtype, dict(key_padding_mask=kpm), dict(src_key_padding_mask=torch.tensor(kpm)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_layer_encoder_matches_torch(dtype):
    """Padded query positions are left out of the comparison (PyTorch's outputs there are not defined)."""
    torch.manual_seed(0)
    d, h, f, b, t = 16, 2, 24, 3, 7
    layer = torch.nn.TransformerEncoderLayer(d, h, f, dropout=0.0, batch_first=True, dtype=TORCH_DTYPE[dtype])
    theirs = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, h, f, dropout=0.0), 3).to(dtype=dtype)
    copy_weights(ours, theirs)
    kpm = padding(b, t)
    x = np.random.default_rng(0).standard_normal((b, t, d))
    compare(ours, theirs, [x], dtype, dict(key_padding_mask=kpm), dict(src_key_padding_mask=torch.tensor(kpm)),
            keep=~kpm)

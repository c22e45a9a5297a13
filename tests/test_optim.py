"""Optimizers and schedules: 20-step trajectories equal torch.optim's (float64), state_dict round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minitx import Tensor
from minitx import functional as F
from minitx import nn, optim
from make_fixtures import minitx_names

torch = pytest.importorskip("torch")

CASES = {
    "sgd": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "sgd_dampening": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3)),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.01)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)),
}


def models():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    ours = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3)).double()
    ours.load_state_dict(minitx_names({k.replace("2.", "1."): v.detach().numpy() for k, v in
                                       theirs.state_dict().items()}))
    return ours, theirs


def our_loss(model, x, y):
    return F.cross_entropy(model[1](model[0](Tensor(x)).tanh()), y)


@pytest.mark.parametrize("case", CASES)
def test_twenty_steps_with_clipping_equal_torch(case):
    ours_cls, theirs_cls, kwargs = CASES[case]
    ours, theirs = models()
    opt, ref = ours_cls(ours.parameters(), **kwargs), theirs_cls(theirs.parameters(), **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
        opt.zero_grad()
        ref.zero_grad()
        our_loss(ours, x, y).backward()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        norm = optim.clip_grad_norm_(list(ours.parameters()), 0.5)
        ref_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        assert math.isclose(norm, ref_norm.item(), rel_tol=1e-12)
        opt.step()
        ref.step()
    theirs_state = {k.replace("2.", "1."): v.detach().numpy() for k, v in theirs.state_dict().items()}
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value, theirs_state[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", ["sgd", "adamw"])
def test_state_dict_round_trip_continues_identically(case):
    ours_cls, _, kwargs = CASES[case]
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 6)), rng.integers(0, 3, 8)) for _ in range(6)]

    def run(model, opt, chunk):
        for x, y in chunk:
            opt.zero_grad()
            our_loss(model, x, y).backward()
            opt.step()

    a, _ = models()
    opt_a = ours_cls(a.parameters(), **kwargs)
    run(a, opt_a, batches)
    b, _ = models()
    opt_b = ours_cls(b.parameters(), **kwargs)
    run(b, opt_b, batches[:3])
    c, _ = models()
    c.load_state_dict(b.state_dict())
    opt_c = ours_cls(c.parameters(), lr=123.0)
    opt_c.load_state_dict(opt_b.state_dict())
    assert opt_c.lr == kwargs["lr"]
    run(c, opt_c, batches[3:])
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, c.state_dict()[name])


def test_load_state_dict_checks_shapes_first():
    model, _ = models()
    opt = optim.Adam(model.parameters())
    our_loss(model, np.ones((2, 6)), np.array([0, 1])).backward()
    opt.step()
    state = opt.state_dict()
    state["state"][1]["exp_avg"] = np.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(model.parameters()).load_state_dict(state)


def test_param_groups_have_their_own_learning_rate_and_skip_params_without_grad():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.0}], lr=0.1)
    before_a, before_b = a.weight.numpy().copy(), b.weight.numpy().copy()
    (a(Tensor(np.ones((1, 2), dtype=np.float32))).sum() + b(Tensor(np.ones((1, 2), dtype=np.float32))).sum()).backward()
    opt.step()
    np.testing.assert_allclose(a.weight.numpy(), before_a - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(b.weight.numpy(), before_b)
    opt.zero_grad()
    opt.step()  # no gradients: nothing moves
    np.testing.assert_allclose(a.weight.numpy(), before_a - 0.1, rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_warmup_schedules(kind):
    opt = optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    make = optim.warmup_cosine if kind == "cosine" else optim.warmup_linear
    sched = make(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(opt.lr)
        sched.step()
    np.testing.assert_allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    halfway = 0.1 + 0.9 * 0.5  # (1 + cos(π/2))/2 = 1 - 1/2
    assert math.isclose(lrs[9], halfway) and lrs[14] == lrs[15] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(lrs[3:], lrs[4:]))
    restored = make(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    restored.load_state_dict({**sched.state_dict(), "last_step": 9})
    assert math.isclose(opt.lr, halfway)


# ----------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.SGD(ps[0], lr=0.1), "iterable of Parameters"),  # a single Tensor, not a list
    (lambda ps: optim.SGD(ps, lr=-0.1), "lr"),
    (lambda ps: optim.Adam(ps, lr=float("inf")), "lr"),
    (lambda ps: optim.Adam(ps, lr=float("nan")), "lr"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), "betas"),
    (lambda ps: optim.Adam(ps, betas=(-0.1, 0.9)), "betas"),
    (lambda ps: optim.Adam(ps, betas=(0.9,)), "betas"),
    (lambda ps: optim.Adam(ps, eps=0.0), "eps"),
    (lambda ps: optim.AdamW(ps, weight_decay=-1e-2), "weight_decay"),
    (lambda ps: optim.SGD(ps, momentum=-0.9), "momentum"),
    (lambda ps: optim.SGD([{"params": ps, "lr": -1.0}], lr=0.1), "lr"),
    (lambda ps: optim.SGD([{"params": ps, "momentun": 0.9}], lr=0.1), "momentun"),
])
def test_constructor_refuses_bad_arguments(make, match):
    params = list(nn.Linear(2, 2).parameters())
    with pytest.raises((TypeError, ValueError), match=match):
        make(params)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_grad_norm_refuses_max_norm_not_positive(max_norm):
    p = nn.Linear(2, 2).weight
    p.grad = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm_([p], max_norm)
    np.testing.assert_array_equal(p.grad, 1.0)


def test_clip_grad_norm_refuses_a_non_finite_norm():
    p = nn.Linear(2, 2).weight
    p.grad = np.array([[1.0, np.nan], [0.0, 0.0]], dtype=np.float32)
    with pytest.raises(FloatingPointError, match="norm"):
        optim.clip_grad_norm_([p], 1.0)


def _stepped_adam():
    model, _ = models()
    opt = optim.Adam(model.parameters())
    our_loss(model, np.ones((2, 6)), np.array([0, 1])).backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("damage, match", [
    (lambda s: s.pop("state"), "keys"),
    (lambda s: s.__setitem__("param_groups", "x"), "list of dicts"),
    (lambda s: s["param_groups"][0].pop("eps"), "hyperparameters"),
    (lambda s: s["param_groups"][0].__setitem__("lr", -1.0), "lr"),
    (lambda s: s["param_groups"][0].__setitem__("betas", [0.9, 2.0]), "betas"),
    (lambda s: s["state"].__setitem__("a", {}), "indices"),
    (lambda s: s["state"][0].__setitem__("momentum_buffer", np.zeros((8, 6))), "keys among"),
    (lambda s: s["state"][0].__setitem__("step", "7"), "number"),
    (lambda s: s["state"].__setitem__(1, [1, 2]), "dict"),
])
def test_load_state_dict_checks_types_and_keys_before_assigning(damage, match):
    _, opt = _stepped_adam()
    state = opt.state_dict()
    damage(state)
    model, _ = models()
    fresh = optim.Adam(model.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert fresh.state == {} and fresh.lr == 0.5


def test_step_checks_every_gradient_before_updating_any():
    model, _ = models()
    opt = optim.Adam(model.parameters())
    params = list(model.parameters())
    for p in params:
        p.grad = np.ones(p.shape)
    params[-1].grad = np.ones((7,))  # broadcastable into a (3,) bias? no: a wrong shape
    before = [p.numpy().copy() for p in params]
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)
    assert opt.state == {}


@pytest.mark.parametrize("make", [lambda ps, fe: optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=fe),
                                  lambda ps, fe: optim.Adam(ps, lr=1e-2, weight_decay=0.1, foreach=fe),
                                  lambda ps, fe: optim.Adam(ps, lr=1e-2, foreach=fe)], ids=["adamw", "adam_l2", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_tensor_adam_is_bitwise_the_per_parameter_update(make, dtype):
    """foreach (one Numba pass over every parameter, the default) against update() parameter by parameter: the
    same arithmetic in the same order, so the same bits; a parameter whose step count differs (it had no
    gradient once) and a non-contiguous parameter (updated by update()) included."""
    shapes = [(7, 5), (5,), (3, 2, 4), (6,)]
    results = []
    for foreach in (True, False):
        params = [Tensor(np.random.default_rng(i).standard_normal(s).astype(dtype), requires_grad=True)
                  for i, s in enumerate(shapes)]
        params.append(Tensor(np.asfortranarray(np.ones((3, 4), dtype)), requires_grad=True))
        opt = make(params, foreach)
        for step in range(4):
            for i, p in enumerate(params):
                skip = i == 1 and step == 1
                p.grad = None if skip else np.random.default_rng(10 * step + i).standard_normal(p.shape).astype(dtype)
            opt.step()
        results.append([a.copy() for p in params for a in (p.data, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])])
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)

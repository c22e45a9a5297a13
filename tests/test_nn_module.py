"""Module bookkeeping: registration, names, modes, state dicts (validated before anything changes), layers' init."""

from __future__ import annotations

import numpy as np
import pytest

from minitx import Tensor, nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4, padding_idx=0)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 3, bias=False)])
        self.register_buffer("scale", np.ones(3, dtype=np.float32))
        self.register_buffer("cache", np.zeros(2, dtype=np.float32), persistent=False)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return h * self.scale


def test_parameters_buffers_and_names_are_registered_in_order():
    model = Tiny()
    assert [n for n, _ in model.named_parameters()] == ["embed.weight", "blocks.0.weight", "blocks.0.bias",
                                                        "blocks.1.weight"]
    assert list(model.state_dict()) == ["embed.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                                        "scale"]  # the non-persistent buffer is not saved
    assert [type(m).__name__ for m in model.modules()] == ["Tiny", "Embedding", "ModuleList", "Linear", "Linear"]
    assert "(blocks): ModuleList" in repr(model) and "in_features=4, out_features=3, bias=False" in repr(model)
    model.extra = nn.Linear(2, 2)
    del model.extra
    assert model.num_parameters() == 5 * 4 + 16 + 4 + 12


def test_state_dict_round_trip_gives_identical_outputs_and_copies():
    a, b = Tiny(), Tiny()
    ids = np.array([[0, 1, 4]])
    state = a.state_dict()
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(ids).numpy(), b(ids).numpy())
    a.blocks[0].weight.data += 1  # the saved snapshot is a copy
    assert not np.array_equal(state["blocks.0.weight"], a.blocks[0].weight.numpy())


def test_load_state_dict_refuses_bad_states_and_changes_nothing():
    model = Tiny()
    before = model.state_dict()
    state = dict(before)
    state["blocks.1.weight"] = np.zeros((4, 4), dtype=np.float32)
    state["blocks.0.bias"] = np.zeros(4, dtype=np.float32)  # valid, must NOT be applied
    with pytest.raises(ValueError, match=r"'blocks.1.weight'.*\(3, 4\).*\(4, 4\)"):
        model.load_state_dict(state)
    del state["embed.weight"]
    state["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: \['embed.weight'\].*unexpected keys: \['extra'\]"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    state["blocks.1.weight"] = np.zeros((3, 4), dtype=np.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["embed.weight"] and unexpected == ["extra"]
    np.testing.assert_array_equal(model.blocks[1].weight.numpy(), 0)


def test_train_eval_zero_grad_and_dtype_conversion():
    model = Tiny()
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    model(np.array([[1, 2]])).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert all((p.grad == 0).all() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.double()
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)} and model.scale.dtype == np.float64


def test_embedding_padding_row_is_zero_and_gets_no_gradient():
    embed = nn.Embedding(5, 3, padding_idx=0)
    np.testing.assert_array_equal(embed.weight.numpy()[0], 0)
    embed(np.array([[0, 2, 0, 2]])).sum().backward()
    np.testing.assert_array_equal(embed.weight.grad[0], 0)
    np.testing.assert_array_equal(embed.weight.grad[2], 2)


def test_linear_initialisation_and_encoder_copies_are_independent():
    linear = nn.Linear(100, 50)
    bound = 1 / np.sqrt(100)
    assert np.abs(linear.weight.numpy()).max() <= bound and np.abs(linear.weight.numpy()).max() > 0.9 * bound
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 3)
    first, second = encoder.layers[0].ff.linear1.weight, encoder.layers[1].ff.linear1.weight
    assert first is not second
    np.testing.assert_array_equal(first.numpy(), second.numpy())  # deep copies start equal, as in PyTorch
    assert len(list(encoder.parameters())) == 3 * 16


def test_sequential_and_parameter_type():
    seq = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert seq(Tensor(np.ones((5, 3), dtype=np.float32))).shape == (5, 2)
    assert isinstance(seq[0].weight, nn.Parameter) and seq[0].weight.requires_grad
    assert repr(nn.Parameter([1.0])).startswith("Parameter(")
    with pytest.raises(TypeError, match="floating point"):
        nn.Parameter(np.array([1, 2]))


def test_skip_init_draws_nothing_and_assign_loads_the_arrays_themselves():
    """A model built under init.skip_init() draws no random numbers (the generator does not move) and writes
    no weight; load_state_dict(assign=True) then gives each parameter and buffer (the same objects) the
    state's own arrays, cast only where the dtype differs, after the same checks as a copying load."""
    from minitx import backend

    state = Tiny().state_dict()
    backend.manual_seed(3)
    before = backend.get_rng_state()
    with nn.init.skip_init():
        model = Tiny()
    assert backend.get_rng_state() == before
    params = dict(model.named_parameters())
    bad = dict(state, scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="shape mismatch for 'scale'"):
        model.load_state_dict(bad, assign=True)
    state["scale"] = state["scale"].astype(np.float64)                 # cast to the buffer's float32
    model.load_state_dict(state, assign=True)
    assert dict(model.named_parameters()) == params                    # the same Parameter objects
    assert model.blocks[0].weight.data is state["blocks.0.weight"]     # the state's array itself, not a copy
    assert model.scale.dtype == np.float32 and np.array_equal(model.scale.data, np.ones(3))
    assert nn.Linear(2, 2).weight.data.any()                           # outside the block, init draws again

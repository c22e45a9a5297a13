"""Regenerate the golden fixtures in tests/fixtures/ from PyTorch:  python tests/make_fixtures.py

``sequence_encoder.npz`` holds, for the seed's SequenceEncoder (batch-first, dropout 0, float64, 2 layers)
built and run in PyTorch: the inputs (ids, attention mask, targets), every weight under its minitx name
(``param.<name>``), the logits, the loss (mean cross-entropy over the real tokens), every gradient
(``grad.<name>``) and the losses of 10 AdamW steps (``adamw_losses``). tests/test_sequence_encoder.py
replays it without PyTorch.

:func:`minitx_names` (no PyTorch needed) renames a PyTorch state dict to minitx's parameter names.
"""

from __future__ import annotations

import math
import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CONFIG = dict(vocab_size=11, embed_dim=16, num_heads=2, ff_dim=24, num_layers=2)
ADAMW = dict(lr=1e-2, weight_decay=0.01, steps=10)


def minitx_names(torch_state: dict) -> dict:
    """PyTorch parameter name -> minitx name, with arrays: ``self_attn.in_proj_weight`` (3D, D) splits into
    ``self_attn.{q,k,v}_proj.weight`` (D, D) (likewise the bias), and an encoder layer's ``linear1``/``linear2``
    live in its ``ff`` module. The positional-encoding buffer ``pe`` is dropped (minitx recomputes it)."""
    ours = {}
    for name, array in torch_state.items():
        array = np.asarray(array)
        if name.endswith(".pe") or name == "pe":
            continue
        if "in_proj_" in name:
            prefix, kind = name.split("in_proj_")  # ("layers.0.self_attn.", "weight")
            for part, piece in zip("qkv", np.split(array, 3, axis=0)):
                ours[f"{prefix}{part}_proj.{kind}"] = piece
            continue
        for linear in ("linear1", "linear2"):
            if name.startswith(f"{linear}.") or f".{linear}." in name:
                name = name.replace(f"{linear}.", f"ff.{linear}.")
        ours[name] = array
    return ours


def build_torch_sequence_encoder(torch, vocab_size, embed_dim, num_heads, ff_dim, num_layers):
    """The seed's SequenceEncoder in PyTorch, batch-first, dropout 0, honouring a key padding mask."""
    nn = torch.nn

    class SequenceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            position = torch.arange(512, dtype=torch.float64).unsqueeze(1)
            div_term = torch.exp(torch.arange(0, embed_dim, 2, dtype=torch.float64) * (-math.log(10000.0) / embed_dim))
            pe = torch.zeros(512, embed_dim, dtype=torch.float64)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
            self.register_buffer("pe", pe)
            layer = nn.TransformerEncoderLayer(embed_dim, num_heads, ff_dim, dropout=0.0, batch_first=True)
            self.transformer_stack = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.output_projection = nn.Linear(embed_dim, vocab_size)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

        def forward(self, ids, attention_mask):
            x = self.embedding(ids) * math.sqrt(embed_dim) + self.pe[: ids.shape[1]]
            return self.output_projection(self.transformer_stack(x, src_key_padding_mask=attention_mask == 0))

    return SequenceEncoder().double()


def fixture_inputs():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, CONFIG["vocab_size"], size=(3, 7))
    attention_mask = np.ones((3, 7), dtype=np.int64)
    attention_mask[1, 5:] = attention_mask[2, 3:] = 0
    targets = np.where(attention_mask == 1, rng.integers(0, CONFIG["vocab_size"], size=(3, 7)), -100)
    return ids, attention_mask, targets


def make_sequence_encoder_fixture(torch) -> dict:
    torch.manual_seed(0)
    model = build_torch_sequence_encoder(torch, **CONFIG)
    ids, attention_mask, targets = fixture_inputs()
    tids, tmask, ttargets = torch.tensor(ids), torch.tensor(attention_mask), torch.tensor(targets)
    out = {"input_ids": ids, "attention_mask": attention_mask, "targets": targets}
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}  # copies: AdamW updates in place
    out.update({f"param.{k}": v for k, v in minitx_names(weights).items()})

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG["vocab_size"]), ttargets.reshape(-1),
                                                 ignore_index=-100)

    logits = model(tids, tmask)
    loss = loss_of(logits)
    loss.backward()
    out["logits"], out["loss"] = logits.detach().numpy(), loss.detach().numpy()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    out.update({f"grad.{k}": v for k, v in minitx_names(grads).items()})

    optimizer = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], weight_decay=ADAMW["weight_decay"])
    losses = []
    for _ in range(ADAMW["steps"]):
        optimizer.zero_grad()
        loss = loss_of(model(tids, tmask))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    out["adamw_losses"] = np.array(losses)
    return out


def main() -> None:
    import torch

    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, "sequence_encoder.npz")
    np.savez_compressed(path, **make_sequence_encoder_fixture(torch))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()

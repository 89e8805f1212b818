"""Networks: shapes on odd multiples of the stride, the remover's untouched-outside rule,
the shipped weights load, and a few training steps lower the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import STRIDE, build_model, load_model, weights_path
from models.train import LOSSES, detector_batch, remover_batch

torch.set_num_threads(1)


@pytest.mark.parametrize("h,w", [(48, 80), (16, 144), (STRIDE, STRIDE)])
def test_shapes(h, w):
    det, rem = build_model("detector").eval(), build_model("remover").eval()
    with torch.inference_mode():
        p = det(torch.rand(2, 3, h, w))
        r = rem(torch.rand(2, 4, h, w))
    assert p.shape == (2, 1, h, w) and r.shape == (2, 3, h, w)
    assert 0 <= p.min() and p.max() <= 1 and 0 <= r.min() and r.max() <= 1


def test_remover_leaves_outside_mask_unchanged():
    rem = build_model("remover").eval()
    x = torch.rand(1, 4, 64, 96)
    x[:, 3] = 0
    x[:, 3, 20:40, 30:70] = 1
    with torch.inference_mode():
        out = rem(x)
    outside = x[:, 3:4].expand(-1, 3, -1, -1) == 0
    assert torch.equal(out[outside], x[:, :3][outside])


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_shipped_weights_load(kind):
    if not weights_path(kind).exists():
        pytest.skip("no shipped weights")
    model = load_model(kind)
    assert not model.training
    assert weights_path(kind).stat().st_size < 20 * 1024 * 1024


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    make = detector_batch if kind == "detector" else remover_batch
    batch = make(rng, 4, 32, source="studio")
    model = build_model(kind, base=8).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = LOSSES[kind](model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

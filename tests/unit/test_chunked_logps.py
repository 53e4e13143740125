"""Chunked head + log-softmax: equal to the unchunked log-probabilities and gradients, and no [M, V] tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ftlab.objectives import chunked_logps
from ftlab.objectives.chunked_logps import head_logps, picked_logps
from ftlab.objectives.token_logps import labelled_logps, token_logps


class LargestTensor(TorchDispatchMode):
    """The largest tensor any operator produces inside the context, in bytes (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _head_and_hidden(m: int = 300, h: int = 16, v: int = 5000, seed: int = 0):
    torch.manual_seed(seed)
    head = nn.Linear(h, v, bias=False)
    hidden = torch.randn(m, h, requires_grad=True)
    targets = torch.randint(0, v, (m,))
    return head, hidden, targets


@pytest.mark.parametrize("chunk", [1, 7, 64, 299])
def test_chunked_equals_unchunked_values_and_gradients(chunk: int) -> None:
    head, hidden, targets = _head_and_hidden()
    reference = picked_logps(head(hidden), targets)
    (grad_h_ref, grad_w_ref) = torch.autograd.grad(reference.sum(), (hidden, head.weight))
    chunked = head_logps(head, hidden, targets, chunk_rows=chunk)
    (grad_h, grad_w) = torch.autograd.grad(chunked.sum(), (hidden, head.weight))
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_h, grad_h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_w, grad_w_ref, atol=1e-5, rtol=1e-5)


def test_no_full_vocabulary_logits_forward_or_backward() -> None:
    """300 rows × 5000 vocabulary: unchunked, a float32 [300, 5000] tensor (6 MB) exists; in chunks of 32 rows
    the largest tensor of forward and backward is a chunk's logits or the head's gradient ([5000, 16])."""
    head, hidden, targets = _head_and_hidden()
    sizes = {}
    for chunk in (10_000, 32):
        with LargestTensor() as counter:
            head_logps(head, hidden, targets, chunk_rows=chunk).sum().backward()
        sizes[chunk] = counter.largest
    assert sizes[10_000] >= 300 * 5000 * 4
    assert sizes[32] <= max(32 * 5000 * 4, 5000 * 16 * 4)


def test_labelled_logps_in_chunks_equals_full_logits(tiny_llama, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = tiny_llama.load_model(AutoModelForCausalLM)
    ids = torch.randint(3, 500, (3, 20))
    labels = ids.clone()
    labels[:, :6] = -100
    with torch.no_grad():
        full, full_rows = token_logps(model(input_ids=ids).logits, labels)
    monkeypatch.setattr(chunked_logps, "CHUNK_ROWS", 5)
    chunked, rows = labelled_logps(model, ids, labels)
    assert torch.equal(rows, full_rows)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    chunked.sum().backward()  # checkpointed chunks recompute in the backward pass
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()

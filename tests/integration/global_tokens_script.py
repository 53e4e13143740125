"""Two gloo ranks (torch.multiprocessing) under DDP against one process on the same rows, for a token-level
RL loss: `python global_tokens_script.py OUT.json` writes the gradients' max |diff| to one process for the
global-token divisor and for each rank's own token mean (run by tests/integration/test_global_tokens.py)."""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ftlab.objectives.base import StepContext
from ftlab.objectives.rl_math import aggregate, clipped_policy_loss
from ftlab.objectives.rl_variants import global_token_divisor

ROWS, WIDTH, VOCAB = 4, 6, 11


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens [4, 6], completion masks of 6, 5, 2 and 1 tokens (rank 0 holds 11, rank 1 holds 3), advantages."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (ROWS, WIDTH), generator=g)
    lengths = torch.tensor([6, 5, 2, 1])
    mask = (torch.arange(WIDTH)[None] < lengths[:, None]).float()
    return tokens, mask, torch.tensor([1.0, -0.5, 2.0, -1.5])


def policy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB))


def grads(model: nn.Module, ctx: StepContext, rows: slice, divisor: str) -> torch.Tensor:
    tokens, mask, adv = data()
    tokens, mask, adv = tokens[rows], mask[rows], adv[rows]
    logps = torch.log_softmax(model(tokens), -1).gather(-1, tokens[..., None]).squeeze(-1)
    per_token, _ = clipped_policy_loss(logps, logps.detach(), adv, 0.2, 0.2)
    tokens_divisor = global_token_divisor(mask, ctx) if divisor == "global" else None
    aggregate(per_token, mask, "token", tokens=tokens_divisor).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def rank(r: int, out: str, store: str) -> None:
    # a file store, not a TCP port picked and released beforehand (with which one run in several hung here);
    # a stuck collective fails in a minute instead of hanging the suite
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=2, timeout=timeout)
    rows = slice(2 * r, 2 * r + 2)
    results = {}
    for divisor in ("global", "rank"):
        model = nn.parallel.DistributedDataParallel(policy())  # averages the ranks' gradients
        ctx = StepContext(model=model, reference=None, ranks=2)
        results[divisor] = grads(model, ctx, rows, divisor).tolist()
    if r == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()  # both ranks are done with every collective
    # leave without running destructors: torch's gloo process group, torn down from a DDP reducer's dealloc at
    # function exit, can deadlock on the GIL with its own worker thread (seen in one run of several)
    sys.stdout.flush()
    os._exit(0)


def main(out: str) -> None:
    store = out + ".store"
    if os.path.exists(store):
        os.unlink(store)
    mp.spawn(rank, args=(out + ".ranks", store), nprocs=2)
    with open(out + ".ranks") as f:
        ranks = {k: torch.tensor(v) for k, v in json.load(f).items()}
    one = grads(policy(), StepContext(model=None, reference=None), slice(0, ROWS), "global")
    diffs = {k: float((v - one).abs().max()) for k, v in ranks.items()}
    with open(out, "w") as f:
        json.dump({"max_abs_diff": diffs, "max_abs_grad": float(one.abs().max())}, f)


if __name__ == "__main__":
    main(sys.argv[1])

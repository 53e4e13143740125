import math

import torch

from ftlab.schedules import WarmupCosine


def test_warmup_then_cosine_to_floor() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # steps 0,1 warm up (0, 1/2); then progress (s-2)/4: 0 -> 1.0, 1/4 -> 0.1 + 0.9·(1+cos(π/4))/2, 1/2 -> 0.55, ...
    expected = [
        0.0,
        0.5,
        1.0,
        0.1 + 0.45 * (1 + math.cos(math.pi / 4)),
        0.55,
        0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)),
        0.1,
    ]
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(seen, expected, strict=True))
    state = sched.state_dict()
    assert state["total_steps"] == 6 and state["warmup_steps"] == 2

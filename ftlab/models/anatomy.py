"""Where a transformer's parts are: stem (embeddings), the stack of blocks, and the top.

Found from the module tree, not from architecture names: the blocks are the `nn.ModuleList` of
identical modules holding the most parameters (Llama `model.layers`, BERT `encoder.layer`,
GPT-2 `h`). Parameters registered before the first block are the stem, after the last the top
(final norm, pooler, head). With tied embeddings the output head is the input embedding and so
belongs to the stem.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ftlab.errors import FTLabError


@dataclass
class Anatomy:
    stem: list[str]
    blocks: list[list[str]]
    top: list[str]
    blocks_path: str


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise FTLabError(f"{type(model).__name__} has no stack of identical blocks (nn.ModuleList) to count layers in")
    return best[1], best[2]


def anatomy(model: nn.Module) -> Anatomy:
    path, blocks = find_blocks(model)
    block_of: dict[str, int] = {}
    for i, block in enumerate(blocks):
        for name, _ in block.named_parameters():
            block_of[f"{path}.{i}.{name}"] = i
    stem: list[str] = []
    top: list[str] = []
    per_block: list[list[str]] = [[] for _ in blocks]
    seen_block = False
    for name, _ in model.named_parameters():
        if name in block_of:
            per_block[block_of[name]].append(name)
            seen_block = True
        elif seen_block:
            top.append(name)
        else:
            stem.append(name)
    return Anatomy(stem=stem, blocks=per_block, top=top, blocks_path=path)

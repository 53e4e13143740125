"""ReferenceCache: reference log-probabilities computed once before training, kept in the run folder.

DPO's reference model never changes, so its answer log-probabilities can be computed in one pass over
the data instead of one extra forward pass per step. They are saved to
`<run folder>/reference_logps.safetensors` (atomically) and read back on resume. Every rank computes
the whole table (one pass, no communication), keyed by each pair's index in its split.

Runs that share backbone and data share the table: where FTLAB_REFERENCE_CACHE names a folder (a study sets
it to `<study dir>/reference_cache` for every cell), a table is also kept there under its fingerprint and the
objective's class, and a run that finds its own there reads it instead of computing it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ftlab import runfolder

FILE = "reference_logps.safetensors"
SHARED = "FTLAB_REFERENCE_CACHE"


def shared_path(key: str, objective: Any) -> Path | None:
    """Where runs sharing backbone, data and objective keep one table; None without FTLAB_REFERENCE_CACHE."""
    folder = os.environ.get(SHARED)
    if not folder:
        return None
    return Path(folder) / f"{type(objective).__qualname__}-{key[:32]}.safetensors"


class ReferenceCache(pl.Callback):
    def __init__(self, objective: Any) -> None:
        self.objective = objective

    def fingerprint(self, trainer: pl.Trainer, pl_module: Any) -> str:
        """What the table depends on: the backbone and every split's token ids and labels, in index order."""
        digest = hashlib.sha256(repr(pl_module.backbone.describe()).encode())
        datamodule = trainer.datamodule
        for dataset in (datamodule.train_set, datamodule.val_set):
            for example in dataset or []:
                fields = (
                    example.index,
                    example.prompt_ids,
                    example.chosen_ids,
                    example.chosen_labels,
                    example.rejected_ids,
                    example.rejected_labels,
                )
                digest.update(repr(fields).encode())
        return digest.hexdigest()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        path = Path(trainer.default_root_dir) / FILE
        key = self.fingerprint(trainer, pl_module)
        shared = shared_path(key, self.objective)
        if path.is_file() and runfolder.weights_metadata(path).get("fingerprint") == key:
            table = runfolder.load_weights(path)
        elif shared is not None and shared.is_file() and runfolder.weights_metadata(shared).get("fingerprint") == key:
            table = runfolder.load_weights(shared)  # another run of the study computed it
            if trainer.is_global_zero:
                runfolder.save_weights(path, table, metadata={"fingerprint": key})
        else:  # absent, or computed for other data or another model: recompute
            with torch.random.fork_rng(devices=[]):  # a DataLoader draws its base seed from the global RNG
                table = self.compute(trainer, pl_module)
            if trainer.is_global_zero:
                runfolder.save_weights(path, table, metadata={"fingerprint": key})
                if shared is not None:
                    shared.parent.mkdir(parents=True, exist_ok=True)
                    runfolder.save_weights(shared, table, metadata={"fingerprint": key})
        self.objective.reference_table = {k: v.to(pl_module.device) for k, v in table.items()}
        pl_module.reference_model = None  # the table replaces a frozen copy: free its memory

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # later validate/test runs may read other data: they compute the reference live
        self.objective.reference_table = None

    def compute(self, trainer: pl.Trainer, pl_module: Any) -> dict[str, torch.Tensor]:
        table: dict[str, torch.Tensor] = {}
        datamodule = trainer.datamodule
        for split, dataset in (("train", datamodule.train_set), ("val", datamodule.val_set)):
            if not dataset:
                continue
            # in order; with fork_rng above, training then sees the data exactly as it would have
            loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, collate_fn=datamodule.collate)
            values = torch.full((len(dataset), 2), float("nan"))
            for batch in loader:
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                with pl_module.reference() as reference:
                    chosen, rejected = self.objective.answer_logps(reference, batch)
                values[batch.index.cpu()] = torch.stack([chosen, rejected], dim=1).float().cpu()
            table[split] = values
        return table

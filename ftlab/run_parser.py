"""What a run's command line composes: the one module, any ftlab datamodule, and the run's own options.

The CLI (`ftlab.cli.FTLabCLI`) and the sweep's config check (`ftlab.sweep.compat`) build their parsers
from this, so a study's cells parse exactly as the runs they launch, without the sweep importing the CLI.
"""

from __future__ import annotations

from typing import Any

from jsonargparse.typing import PositiveInt

from ftlab.data.base import FineTuneDataModule
from ftlab.module import FineTuneModule

COMPOSITION: dict[str, Any] = {
    "model_class": FineTuneModule,
    "datamodule_class": FineTuneDataModule,
    "subclass_mode_data": True,
    "auto_configure_optimizers": False,
    "parser_kwargs": {"allow_abbrev": False},  # a mistyped key is an error, not a prefix match
}
"""LightningCLI's arguments that decide what a run config may hold."""


def add_run_options(parser: Any) -> None:
    """The options of a run beside the module, the datamodule and the trainer."""
    parser.add_argument(
        "--overwrite", type=bool, default=False, help="Start over in a run folder that already holds a run."
    )
    parser.add_argument(
        "--checkpoint_every_n_steps",
        type=PositiveInt | None,
        default=None,
        help="Save checkpoints/last.ckpt every N optimizer steps (the run's ModelCheckpoint, or one added).",
    )

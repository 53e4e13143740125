"""What a command prints: third-party notices that are not the user's to act on filtered narrowly (each by its
exact message and category or logger), and the last lines of a fit saying why it stopped and where its outputs are.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from ftlab import runfolder

# (message regex, category, module regex): warnings raised inside libraries on every run, none of which a
# user of ftlab can act on.
_WARNINGS: list[tuple[str, type[Warning], str]] = [
    # torch deprecated LeafSpec; Lightning's pytree copy still builds one on every batch transfer
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\."),
    # peft and Lightning read the deprecated alias of is_activation_checkpointing
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r""),
    # LoRA init pissa/olora: peft advises converting the adapter to a plain LoRA, which ftlab's export does
    (r"(PiSSA|OLoRA) changes the base weights", UserWarning, r"peft\."),
]

_RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
_TIPS = ("💡 Tip: For seamless cloud",)  # Lightning's advertisements for its hosted loggers
_STOPPED = "`Trainer.fit` stopped: "


class _LightningNotices(logging.Filter):
    """Drops Lightning's product tips; holds back "`Trainer.fit` stopped: ..." (printed mid progress bar) so the
    fit's last lines can say it once the bar is done."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_TIPS):
            return False
        if message.startswith(_STOPPED):
            self.stopped = message[len(_STOPPED) :].replace("`", "").rstrip(".")
            return False
        return True


NOTICES = _LightningNotices()


def quiet() -> None:
    """Install the filters (idempotent). Transformers' per-tensor "Loading weights" bar goes; download bars of
    the hub stay."""
    for message, category, module in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logger = logging.getLogger(_RANK_ZERO)
    if NOTICES not in logger.filters:
        logger.addFilter(NOTICES)
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # also switches the hub's bars off: downloads keep theirs
    enable_progress_bars()


def outputs_line(root: Path) -> str:
    """ "run folder: runs/quickstart (summary.json, trainable.safetensors, logs/metrics.csv, checkpoints/)"."""
    names = [runfolder.SUMMARY, runfolder.WEIGHTS, runfolder.CONFIG]
    found = [name for name in names if (root / name).is_file()]
    logs = root / runfolder.LOGS
    found += [str(path.relative_to(root)) for path in sorted(logs.rglob("metrics.csv"))] if logs.is_dir() else []
    if (root / runfolder.CHECKPOINTS).is_dir() and any((root / runfolder.CHECKPOINTS).iterdir()):
        found.append(f"{runfolder.CHECKPOINTS}/")
    return f"run folder: {root} ({', '.join(found) or 'nothing written'})"


def report_fit(root: Path) -> None:
    """The fit's last lines on stdout: why it stopped (when Lightning said so) and where its outputs are."""
    if NOTICES.stopped:
        print(f"fit stopped: {NOTICES.stopped}", flush=True)
        NOTICES.stopped = None
    summary = root / runfolder.SUMMARY
    startup = json.loads(summary.read_text()).get("startup_seconds") if summary.is_file() else None
    if startup is not None:
        print(f"first step {startup:.1f} s after start (imports, config, model and data)", flush=True)
    print(outputs_line(root), flush=True)

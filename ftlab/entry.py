"""The `ftlab` command (`python -m ftlab`, or the `ftlab` console script): the top-level help, answered without
importing torch or Lightning, and the hand-over of every subcommand to the module that runs it (ftlab.cli for the
Lightning subcommands and export, ftlab.sweep.cli for sweep and results)."""

from __future__ import annotations

import sys

import ftlab

SUBCOMMANDS: dict[str, str] = {
    "fit": "train a run: --config base.yaml --config method.yaml --config objective.yaml [--key=value ...]",
    "validate": "one evaluation epoch over the validation set",
    "test": "one evaluation epoch over the test set",
    "predict": "run the model over the predict set",
    "export": "a finished run folder as a peft adapter and/or a plain model folder",
    "sweep": "expand a study file (experiments/sweeps/*.yaml) and launch its cells",
    "results": "aggregate a study folder into CSV, a Markdown table and plots",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        f"usage: ftlab {{{','.join(SUBCOMMANDS)}}} ...",
        "",
        ftlab.__doc__.strip(),
        "",
        "subcommands (`ftlab SUBCOMMAND --help` lists each one's options):",
        *(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help  show this help and exit",
        "  --version   print the version and exit",
        "",
        "examples:",
        "  ftlab fit --config experiments/quickstart.yaml",
        "  ftlab fit --config experiments/quickstart.yaml --model.method.help ftlab.methods.LoRA",
        "  ftlab export runs/quickstart --out exported/quickstart",
        "",
        "`python -m ftlab` is the same command.",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"ftlab {ftlab.__version__}")
        return
    if argv[0] not in SUBCOMMANDS:
        print(usage(), file=sys.stderr)
        hint = f"; e.g. ftlab fit {' '.join(argv)}" if argv[0].startswith("-") else ""
        names = ", ".join(SUBCOMMANDS)
        print(f"ftlab: error: the first argument must be a subcommand ({names}){hint}", file=sys.stderr)
        raise SystemExit(2)
    from ftlab import help_cache

    if help_cache.is_plain_help(argv):
        if help_cache.print_cached(argv):
            raise SystemExit(0)
        from ftlab.cli import main as cli_main

        help_cache.record(argv, lambda: cli_main(args))
        return  # the parser exits after its help; never run the subcommand as well
    if argv[0] == "fit":
        from ftlab import early_signals

        early_signals.hold()  # a requeue notice during the imports below is kept for the fit, not fatal
    from ftlab.cli import main as cli_main

    cli_main(args)

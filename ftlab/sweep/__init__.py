"""Ablation studies: a grid of runs from one study file, launched locally or as a SLURM array.

A study expands into cells (study.py), checked for parts that cannot work together without loading a
model (compat.py), written as a manifest of plain `python -m ftlab fit ...` commands (manifest.py),
run by a launcher (local.py, slurm.py) and summarised into tables and plots (results.py, plots.py).
Nothing in a run imports this package: a cell is a command that can be replayed by hand.
"""

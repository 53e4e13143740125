"""Study files: grid expansion (stable order), zipped axes, exclusions, run ids, and mistakes named by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftlab.errors import FTLabError
from ftlab.sweep.manifest import build, run_id
from ftlab.sweep.study import Cell, expand, load_study


def write_study(tmp_path: Path, **spec) -> Path:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text("{}\n")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), **spec}, sort_keys=False))
    return path


def labels(cells: list[Cell]) -> list[tuple[str, ...]]:
    return [tuple(c.axes.values()) for c in cells]


def test_grid_is_a_product_with_the_first_axis_slowest(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        base=["a.yaml"],
        overrides={"trainer.max_steps": 3},
        axes={"method": ["b.yaml", "c.yaml"], "seed": {"key": "seed_everything", "values": [0, 1, 2]}},
    )
    cells, excluded = expand(load_study(path))
    assert labels(cells) == [("b", s) for s in "012"] + [("c", s) for s in "012"] and not excluded
    assert cells[4].configs == [str(tmp_path / "a.yaml"), str(tmp_path / "c.yaml")]
    assert cells[4].overrides == {"trainer.max_steps": 3, "seed_everything": 1}
    again, _ = expand(load_study(path))
    assert [run_id(c) for c in again] == [run_id(c) for c in cells]


def test_zipped_axes_move_together(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        axes={
            "rank": {"key": "model.method.init_args.r", "values": [4, 8]},
            "seed": {"key": "seed_everything", "values": [0, 1]},
            "alpha": {"key": "model.method.init_args.alpha", "values": [8, 16]},
        },
        zip=[["rank", "alpha"]],
    )
    cells, _ = expand(load_study(path))
    assert labels(cells) == [("4", "0", "8"), ("4", "1", "8"), ("8", "0", "16"), ("8", "1", "16")]


def test_exclusions_drop_matching_cells(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        axes={"method": ["a.yaml", "b.yaml", "c.yaml"], "lr": {"key": "lr", "values": [0.1, 0.01]}},
        exclude=[{"method": "a", "lr": 0.01}, {"method": ["b", "c"], "lr": 0.1}],
    )
    cells, excluded = expand(load_study(path))
    assert labels(cells) == [("a", "0.1"), ("b", "0.01"), ("c", "0.01")]
    assert labels(excluded) == [("a", "0.01"), ("b", "0.1"), ("c", "0.1")]


def test_bundled_items_carry_configs_and_overrides(tmp_path: Path) -> None:
    item = {"name": "dpo", "config": ["b.yaml", "c.yaml"], "set": {"--model.objective.init_args.beta": 0.2}}
    cells, _ = expand(load_study(write_study(tmp_path, axes={"objective": ["a.yaml", item]})))
    assert labels(cells) == [("a",), ("dpo",)]
    assert cells[1].configs[-2:] == [str(tmp_path / "b.yaml"), str(tmp_path / "c.yaml")]
    assert cells[1].overrides == {"model.objective.init_args.beta": 0.2}


def test_run_id_hashes_arguments_not_mapping_order() -> None:
    one = Cell({"m": "lora"}, ["x.yaml"], {"a": 1, "b": 2})
    two = Cell({"m": "lora"}, ["x.yaml"], {"b": 2, "a": 1})
    assert run_id(one) == run_id(two) and run_id(one).startswith("lora-")
    assert run_id(one) != run_id(Cell({"m": "lora"}, ["x.yaml"], {"a": 1, "b": 3}))
    assert run_id(one) != run_id(Cell({"m": "lora"}, ["y.yaml"], {"a": 1, "b": 2}))
    # sha256 of the canonical JSON: pinned, so ids stay the same across versions and machines
    assert run_id(Cell({}, ["x.yaml"], {})) == "5a10afd9"


def test_two_cells_with_the_same_arguments_are_refused(tmp_path: Path) -> None:
    axes = {"lr": [{"name": "small", "set": {"lr": 1}}, {"name": "also-small", "set": {"lr": 1}}]}
    study = load_study(write_study(tmp_path, axes=axes))
    with pytest.raises(FTLabError, match=r"study .*study.yaml: axes: cells .* have the same arguments"):
        build(study, expand(study)[0])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"axes": {"method": []}}, r"axes.method: the axis is empty"),
        ({"axes": {}}, r"axes: a study needs at least one axis"),
        ({"axes": {"method": ["nope.yaml"]}}, r"axes.method\[0\]: config file nope.yaml does not exist"),
        ({"base": ["a.yaml", "gone.yaml"], "axes": {"m": ["a.yaml"]}}, r"base\[1\]: config file gone.yaml"),
        ({"axes": {"m": ["a.yaml"]}, "launch": 1}, r"launch: unknown key"),
        ({"axes": {"m": ["a.yaml", "b.yaml"], "s": ["c.yaml"]}, "zip": [["m", "s"]]}, r"zip\[0\]: .*same number"),
        ({"axes": {"m": ["a.yaml"]}, "exclude": [{"x": "a"}]}, r"exclude\[0\]: expected a mapping from axis"),
        ({"axes": {"m": ["a.yaml", {"config": "a.yaml"}]}}, r"axes.m: two values share a label"),
        ({"axes": {"m": ["a.yaml"]}, "report": "val/acc"}, r"report: expected a list of metric names"),
    ],
)
def test_mistakes_name_the_study_file_and_key(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(FTLabError, match=r"study .*study.yaml: " + message):
        load_study(write_study(tmp_path, **spec))

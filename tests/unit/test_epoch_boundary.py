"""The loop states a checkpoint holds at an epoch's boundary, rewritten into ones Lightning resumes exactly.

The states below are those Lightning 2.6 saved in a 5-batch epoch (read from real checkpoints of the quickstart's
model): after the last batch (`on_train_batch_end`), after validation (`on_validation_end`) and at the epoch's
end (`on_train_epoch_end`), in the first and second epoch. tests/integration/test_resume_boundary.py resumes from
each through the real command line.
"""

from __future__ import annotations

import copy
from typing import Any

from ftlab.callbacks.epoch_boundary import rewrite as rewrite_any


def rewrite(state: dict[str, Any]) -> str | None:
    return rewrite_any(state, lambda epoch: True)  # a run that validates after every epoch's last batch


def counts(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
    return {"ready": ready, "started": started, "processed": processed, "completed": completed}


def fit_loop(epochs: dict[str, int], batches: dict[str, int], stepped: int, validation: dict[str, int]) -> dict:
    this_epoch = {key: value - 5 * epochs["completed"] for key, value in batches.items()}  # 5 batches an epoch
    return {
        "state_dict": {"combined_loader": [{"epoch": epochs["completed"], "batches": 5}]},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
        "epoch_loop.batch_progress": {"total": batches, "current": this_epoch, "is_last_batch": True},
        "epoch_loop.val_loop.batch_progress": {
            "total": validation,
            "current": dict(validation),
            "is_last_batch": bool(validation["completed"]),
        },
        "epoch_progress": {"total": epochs, "current": dict(epochs)},
    }


NO_VALIDATION = counts(0, 0, 0, 0)
VALIDATED = counts(2, 2, 2, 2)


def test_after_the_last_batch_validation_and_the_epochs_end_are_pending() -> None:
    state = fit_loop(counts(1, 1, 0, 0), counts(5, 5, 5, 4), 4, NO_VALIDATION)
    assert rewrite(state) == "saved after an epoch's last batch: its validation and end run first"
    batches = state["epoch_loop.batch_progress"]  # the last batch done
    assert batches["total"] == counts(5, 5, 5, 5) and batches["current"] == counts(5, 5, 5, 5)
    validation = state["epoch_loop.val_loop.batch_progress"]  # a run started, none of its batches done
    assert validation["total"] == counts(1, 1, 0, 0) and validation["current"] == counts(1, 1, 0, 0)
    assert state["epoch_progress"]["total"] == counts(1, 1, 0, 0)  # the epoch itself untouched
    assert state["epoch_loop.state_dict"] == {"_batches_that_stepped": 4}


def test_after_a_later_epochs_last_batch_the_previous_validation_run_is_not_counted() -> None:
    # the second epoch: this epoch's validation total is 0, the last run's batches (epoch 1's) still in "current"
    state = fit_loop(counts(2, 2, 1, 1), counts(10, 10, 10, 9), 9, VALIDATED)
    state["epoch_loop.val_loop.batch_progress"]["total"] = counts(0, 0, 0, 0)
    assert rewrite(state) is not None
    validation = state["epoch_loop.val_loop.batch_progress"]
    assert validation["total"] == counts(1, 1, 0, 0) and validation["current"] == counts(1, 1, 0, 0)


def test_at_the_epochs_end_the_state_goes_back_to_after_validation() -> None:
    state = fit_loop(counts(2, 2, 2, 1), counts(10, 10, 10, 10), 10, VALIDATED)
    after_validation = fit_loop(counts(2, 2, 1, 1), counts(10, 10, 10, 10), 9, VALIDATED)
    assert rewrite(state) == "saved at an epoch's end: the epoch's end runs again"
    assert state == after_validation


def test_states_lightning_resumes_exactly_are_left_as_they_are() -> None:
    mid_epoch = fit_loop(counts(1, 1, 0, 0), counts(3, 3, 3, 2), 2, NO_VALIDATION)
    mid_epoch["epoch_loop.batch_progress"]["is_last_batch"] = False
    after_validation = fit_loop(counts(1, 1, 0, 0), counts(5, 5, 5, 5), 4, VALIDATED)
    mid_validation = fit_loop(counts(1, 1, 0, 0), counts(5, 5, 5, 5), 4, counts(2, 2, 1, 1))
    for state in (mid_epoch, after_validation, mid_validation):
        before = copy.deepcopy(state)
        assert rewrite(state) is None
        assert state == before


def test_a_state_without_the_loop_counters_is_left_alone() -> None:
    partial: dict[str, Any] = {"epoch_progress": {"total": counts(1, 1, 1, 0)}}
    assert rewrite(partial) is None and partial == {"epoch_progress": {"total": counts(1, 1, 1, 0)}}


def test_a_boundary_without_validation_after_it_is_left_to_lightning() -> None:
    for state in (
        fit_loop(counts(1, 1, 0, 0), counts(5, 5, 5, 4), 4, NO_VALIDATION),
        fit_loop(counts(2, 2, 2, 1), counts(10, 10, 10, 10), 10, VALIDATED),
    ):
        before = copy.deepcopy(state)
        asked: list[int] = []

        def no_validation(epoch: int, asked: list[int] = asked) -> bool:
            asked.append(epoch)
            return False

        assert rewrite_any(state, no_validation) is None
        assert state == before and asked == [before["epoch_progress"]["total"]["completed"]]

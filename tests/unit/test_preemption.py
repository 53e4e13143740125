"""Preemption stops at an optimizer-step boundary: never halfway through gradient accumulation; under a SLURM
batch job a SIGUSR1 stop requeues the job (the command runner is injected: no real scontrol here), and ftlab's CLI
turns Lightning's own requeue handler off."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ftlab.callbacks.preemption import REQUEUE_FLAG, Preemption, preempted, requeue_command
from ftlab.cli import FTLabCLI, slurm_plugins
from ftlab.errors import FTLabError
from tests.conftest import REPO

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
SFT_ARGS = [
    "--model.method=ftlab.methods.LoRA",
    "--model.objective=ftlab.objectives.SFT",
    "--data=ftlab.data.SFTDataModule",
    "--data.train=ftlab/assets/self_instruct_seed.jsonl",
    "--data.limit=8",
]


def fake_trainer(tmp: Path, accumulate: int) -> SimpleNamespace:
    saved: list[Path] = []
    return SimpleNamespace(
        accumulate_grad_batches=accumulate,
        num_training_batches=10,
        world_size=1,
        callbacks=[],
        default_root_dir=str(tmp),
        global_step=0,
        should_stop=False,
        saved=saved,
        save_checkpoint=saved.append,
    )


def test_waits_for_the_accumulation_boundary(tmp_path: Path) -> None:
    callback = Preemption()
    trainer = fake_trainer(tmp_path, accumulate=4)
    trainer.callbacks.append(callback)
    callback.received = signal.SIGTERM
    for idx in range(3):  # batches 0-2 only accumulate
        callback.on_train_batch_end(trainer, None, None, None, idx)
        assert not trainer.saved and not trainer.should_stop
    callback.on_train_batch_end(trainer, None, None, None, 3)  # the 4th batch steps the optimizer
    assert trainer.saved == [tmp_path / "checkpoints" / "last.ckpt"] and trainer.should_stop
    assert preempted(trainer)


def test_no_signal_no_stop(tmp_path: Path) -> None:
    callback = Preemption()
    trainer = fake_trainer(tmp_path, accumulate=1)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.saved and not trainer.should_stop and not preempted(trainer)


BATCH = {"SLURM_JOB_ID": "4242", "ENVIRONMENT": "BATCH"}
USR1, TERM = int(signal.SIGUSR1), int(signal.SIGTERM)


@pytest.mark.parametrize(
    ("signum", "environ", "expected"),
    [
        (USR1, BATCH, ["scontrol", "requeue", "4242"]),
        (USR1, {**BATCH, "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}, ["scontrol", "requeue", "4240_2"]),
        (TERM, BATCH, None),  # SLURM itself stopping the job (scancel, time limit): it decides about a requeue
        (None, BATCH, None),
        (USR1, {"SLURM_JOB_ID": "4242"}, None),  # salloc / srun --pty: an interactive allocation, no batch script
        (USR1, {"SLURM_JOB_ID": "4242", REQUEUE_FLAG: "1"}, ["scontrol", "requeue", "4242"]),
        (USR1, {**BATCH, REQUEUE_FLAG: "0"}, None),
        (USR1, {"ENVIRONMENT": "BATCH"}, None),  # no SLURM job at all
        (USR1, {**BATCH, "SLURM_JOB_ID": "4242; rm -rf /"}, None),
        (USR1, {}, None),  # outside SLURM: unchanged, a stop and nothing else
    ],
    ids=["batch", "array-task", "sigterm", "no-signal", "interactive", "flag-1", "flag-0", "no-job", "bad-id", "none"],
)
def test_when_to_requeue(signum: int | None, environ: dict[str, str], expected: list[str] | None) -> None:
    assert requeue_command(signum, environ) == expected


def test_a_malformed_flag_is_refused() -> None:
    with pytest.raises(FTLabError, match=REQUEUE_FLAG):
        requeue_command(USR1, {**BATCH, REQUEUE_FLAG: "yes"})


@pytest.fixture
def sigterm_kept():
    """The requeue sets SIGTERM to ignore for the rest of the process: give the test process its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


class Runner:
    def __init__(self, returncode: int = 0, stderr: str = "", raises: BaseException | None = None) -> None:
        self.commands: list[list[str]] = []
        self.returncode, self.stderr, self.raises = returncode, stderr, raises

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.commands.append(command)
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


def stopped_on(tmp: Path, signum: int, runner: Runner, global_zero: bool = True) -> tuple[Preemption, SimpleNamespace]:
    """A one-rank fit that got `signum`, stopped at the step boundary and reached its teardown."""
    callback = Preemption(runner=runner)
    trainer = fake_trainer(tmp, accumulate=1)
    trainer.is_global_zero = global_zero
    trainer.callbacks.append(callback)
    callback.received = signum
    callback.on_train_batch_end(trainer, None, None, None, 0)
    callback.teardown(trainer, None, "fit")
    return callback, trainer


def test_a_batch_job_requeues_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigterm_kept: None, caplog: pytest.LogCaptureFixture
) -> None:
    for key, value in BATCH.items():
        monkeypatch.setenv(key, value)
    runner = Runner()
    callback, trainer = stopped_on(tmp_path, USR1, runner)
    assert trainer.saved == [tmp_path / "checkpoints" / "last.ckpt"] and trainer.should_stop
    assert runner.commands == [["scontrol", "requeue", "4242"]] and callback.requeued
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # SLURM's SIGTERM after the requeue: exit 0
    assert "scontrol requeue 4242: the job goes back in the queue" in caplog.text


def test_only_global_rank_zero_requeues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigterm_kept: None) -> None:
    for key, value in BATCH.items():
        monkeypatch.setenv(key, value)
    runner = Runner()
    callback, _ = stopped_on(tmp_path, USR1, runner, global_zero=False)
    assert runner.commands == [] and not callback.requeued
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # this rank gets SLURM's SIGTERM too


@pytest.mark.parametrize("environ", [{"SLURM_JOB_ID": "4242"}, {}], ids=["interactive", "no-slurm"])
def test_no_requeue_outside_a_batch_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict) -> None:
    for key in (*BATCH, REQUEUE_FLAG, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    before = signal.getsignal(signal.SIGTERM)
    runner = Runner()
    callback, trainer = stopped_on(tmp_path, USR1, runner)
    assert trainer.saved and runner.commands == [] and not callback.requeued  # saved and stopped, as before
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_saves_but_never_requeues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BATCH.items():
        monkeypatch.setenv(key, value)
    runner = Runner()
    callback, trainer = stopped_on(tmp_path, TERM, runner)
    assert trainer.saved and runner.commands == [] and not callback.requeued


@pytest.mark.parametrize(
    "runner",
    [Runner(1, "Requested operation is presently disabled for job 4242"), Runner(raises=FileNotFoundError("scontrol"))],
    ids=["not-requeueable", "no-scontrol"],
)
def test_a_failed_requeue_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigterm_kept: None, runner: Runner, caplog
) -> None:
    for key, value in BATCH.items():
        monkeypatch.setenv(key, value)
    callback, trainer = stopped_on(tmp_path, USR1, runner)
    assert trainer.saved and runner.commands == [["scontrol", "requeue", "4242"]] and not callback.requeued
    assert "scontrol requeue 4242 failed" in caplog.text and "resubmit" in caplog.text


def test_any_rank_s_usr1_makes_it_a_requeue(tmp_path: Path) -> None:
    """With several ranks one may see SIGTERM or nothing while another saw USR1: all stop, and it is a requeue."""
    decisions: list[bool] = []

    def reduce(decision: bool, all: bool = True) -> bool:
        decisions.append(decision)
        return True  # the other rank got USR1

    callback = Preemption(runner=Runner())
    trainer = fake_trainer(tmp_path, accumulate=1)
    trainer.world_size, trainer.strategy = 2, SimpleNamespace(reduce_boolean_decision=reduce)
    callback.on_train_batch_end(trainer, None, None, None, 0)  # this rank saw no signal
    assert decisions == [False, False] and trainer.saved and callback.stop_signal == USR1


def test_sigusr1_is_caught_from_setup_on_and_handed_back_at_teardown(tmp_path: Path) -> None:
    """A notice during model loading or the sanity check is kept (no handler there would kill the process)."""
    before = signal.getsignal(signal.SIGUSR1)
    callback = Preemption(runner=Runner())
    trainer = fake_trainer(tmp_path, accumulate=1)
    trainer._accelerator_connector = SimpleNamespace(cluster_environment=SLURMEnvironment(auto_requeue=False))
    callback.setup(trainer, None, "fit")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert callback.received == USR1
    finally:
        callback.teardown(trainer, None, "fit")
    assert signal.getsignal(signal.SIGUSR1) is before


def test_lightning_s_own_requeue_keeps_sigusr1(tmp_path: Path) -> None:
    """A config that turns Lightning's auto-requeue back on keeps its SIGUSR1 handler; ftlab stays off it."""
    before = signal.getsignal(signal.SIGUSR1)
    callback = Preemption(runner=Runner())
    trainer = fake_trainer(tmp_path, accumulate=1)
    trainer._accelerator_connector = SimpleNamespace(cluster_environment=SLURMEnvironment(auto_requeue=True))
    callback.setup(trainer, None, "fit")
    assert signal.getsignal(signal.SIGUSR1) is before
    callback.teardown(trainer, None, "fit")


def test_lightning_auto_requeue_is_off_under_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242"}.items():
        monkeypatch.setenv(key, value)
    plugins = slurm_plugins(None)
    assert len(plugins) == 1 and isinstance(plugins[0], SLURMEnvironment) and not plugins[0].auto_requeue
    own = SLURMEnvironment(auto_requeue=True)  # a config that names its environment keeps it
    assert slurm_plugins(own) is own and slurm_plugins([own]) == [own]
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's sign of an interactive allocation
    assert slurm_plugins(None) is None
    monkeypatch.delenv("SLURM_NTASKS")
    assert slurm_plugins(["bf16-mixed"]) == ["bf16-mixed"]


def test_the_cli_trainer_leaves_sigusr1_to_ftlab_under_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train"}
    for key, value in {**slurm, "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning may set these: monkeypatch puts them back
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.chdir(REPO)
    cli = FTLabCLI(args=["--config", str(BASE), *SFT_ARGS, f"--trainer.default_root_dir={tmp_path}"], run=False)
    environment = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert Preemption._owns_sigusr1(cli.trainer)


# a stand-in for the `python` the sbatch templates exec: records the arguments it got
FAKE_PYTHON = '#!/bin/sh\nprintf "%s\\n" "$*" > "$FAKE_OUT"\n'
# and for `srun` (the templates start the tasks with it): drops its options and runs the command itself
FAKE_SRUN = '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'


def run_template(template: str, run: Path, tmp: Path) -> str:
    """Runs slurm/<template> as the batch script would (array fields filled in by hand); the python args."""
    bin_dir, out = tmp / "bin", tmp / "args.txt"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", FAKE_PYTHON), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_OUT": str(out), "SLURM_JOB_ID": "9"}
    script = REPO / "slurm" / template
    if template == "array.sbatch":
        (tmp / "commands.tsv").write_text(f"cell\t{run}\tpython -m ftlab fit\tpython -m ftlab fit\n")
        (tmp / "logs").mkdir(exist_ok=True)
        text = script.read_text()
        fields = {"SBATCH_LINES": "", "WORKDIR": str(tmp), "COMMANDS": str(tmp / "commands.tsv")}
        for key, value in {**fields, "LOGS": str(tmp / "logs"), "SETUP": "", "LAUNCH": ""}.items():
            text = text.replace(f"@{key}@", value)
        script = tmp / "array.sbatch"
        script.write_text(text)
        env |= {"SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "0"}
    done = subprocess.run(["bash", str(script), str(run)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text()


@pytest.mark.parametrize("template", ["train.sbatch", "array.sbatch"])
def test_the_templates_resume_from_last_ckpt(template: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert "--ckpt_path" not in run_template(template, run, tmp_path)  # a fresh run
    (run / "config.yaml").write_text("")
    assert "--overwrite=true" in run_template(template, run, tmp_path)  # failed before its first checkpoint
    hpc = run / "hpc_ckpt_1.ckpt"  # Lightning's mid-step save: an older ftlab, or its auto-requeue turned back on
    hpc.write_text("")
    assert f"--ckpt_path {hpc}" in run_template(template, run, tmp_path)  # the only checkpoint there is
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_text("")
    os.utime(last, (1, 1))  # older than the HPC save, still preferred: it was saved at a step boundary
    assert f"--ckpt_path {last}" in run_template(template, run, tmp_path)


def test_a_held_notice_is_recorded_and_the_handler_given_back() -> None:
    from ftlab import early_signals

    previous = signal.getsignal(signal.SIGUSR1)
    early_signals.hold()
    os.kill(os.getpid(), signal.SIGUSR1)  # recorded, not acted on
    assert early_signals.release() == USR1
    assert signal.getsignal(signal.SIGUSR1) is previous and early_signals.release() is None


def test_release_never_replaces_a_handler_installed_since_the_hold() -> None:
    from ftlab import early_signals

    previous = signal.getsignal(signal.SIGUSR1)
    early_signals.hold()

    def mine(signum, frame) -> None:
        pass

    signal.signal(signal.SIGUSR1, mine)
    try:
        assert early_signals.release() is None and signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, previous)

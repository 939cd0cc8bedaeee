"""Replay a recorded training trajectory of an original implementation through hf_mim's own Trainer.

A fixture holds every batch and mask of the original's run. `replay` feeds them, in order, to a real
`MimPretrainingTrainer` subclass (its optimizer groups, schedules, EMA update, loss and clipping run unchanged) and
records what that trainer did at every step: the loss the model returned, the lr and weight decay each parameter
was stepped with, and the EMA momentum passed to `update_teacher`.
"""

from dataclasses import dataclass, field

import pytest
import torch
from torch.utils.data import IterableDataset
from transformers import TrainerCallback


class RecordedSteps(IterableDataset):
    """Yields one placeholder example per image of every recorded step, in order (an iterable dataset: the Trainer
    neither shuffles nor re-samples it)."""

    def __init__(self, num_steps: int, batch_size: int):
        self.num_steps, self.batch_size = num_steps, batch_size

    def __iter__(self):
        for step in range(self.num_steps):
            for index in range(self.batch_size):
                yield {"step": step, "index": index}


class RecordedCollator:
    """Turns the placeholder examples of step s into that step's recorded batch: `batch_for(step)` -> dict."""

    def __init__(self, batch_for):
        self.batch_for = batch_for

    def __call__(self, examples: list[dict]) -> dict:
        steps = {e["step"] for e in examples}
        if len(steps) != 1:
            raise RuntimeError(f"A batch mixes recorded steps {sorted(steps)}: batch size mismatch.")
        return self.batch_for(steps.pop())


@dataclass
class Trajectory:
    losses: list[float] = field(default_factory=list)
    # per step: {parameter name: (lr, weight_decay)} of the group that stepped it
    hyper: list[dict[str, tuple[float, float]]] = field(default_factory=list)
    momenta: list[float] = field(default_factory=list)


class _HyperParameterRecorder(TrainerCallback):
    def __init__(self, trajectory: Trajectory, model):
        self.trajectory = trajectory
        self.names = {id(p): n for n, p in model.named_parameters()}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        groups = optimizer.param_groups
        self.trajectory.hyper.append(
            {self.names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
        )


# TrainingArguments every replay shares: CPU, no reporting, saving, logging or workers (the batches come in order
# from the recording), the recorded fields kept.
REPLAY_ARGUMENTS = dict(
    use_cpu=True,
    report_to=[],
    save_strategy="no",
    logging_steps=10_000,
    dataloader_num_workers=0,
    disable_tqdm=True,
    remove_unused_columns=False,
)


def replay(trainer_class, arguments, model, num_steps: int, batch_size: int, batch_for) -> tuple[Trajectory, object]:
    """Train `model` with `trainer_class(args=arguments)` on the recorded batches; returns what it did."""
    trajectory = Trajectory()
    model.register_forward_hook(lambda module, args, output: trajectory.losses.append(float(output.loss)))
    update_teacher = getattr(model, "update_teacher", None)  # None: no teacher (VICRegL)

    def recording_update(momentum):
        trajectory.momenta.append(float(momentum))
        update_teacher(momentum)

    if update_teacher is not None:
        model.update_teacher = recording_update
    trainer = trainer_class(
        model=model,
        args=arguments,
        train_dataset=RecordedSteps(num_steps, batch_size),
        data_collator=RecordedCollator(batch_for),
        callbacks=[_HyperParameterRecorder(trajectory, model)],
    )
    trainer.train()
    if len(trajectory.losses) != num_steps:
        raise RuntimeError(f"Replayed {len(trajectory.losses)} steps, expected {num_steps}.")
    return trajectory, trainer


def relative_gap(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the fixtures' relative measure)."""
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-12))


def optimizer_state_gap(actual: dict, expected: dict, bound: float, skip: tuple[str, ...] = ()) -> float:
    """The largest `relative_gap` between the replay's optimizer state and the recorded one ({parameter: {key:
    tensor}}, every recorded key of every parameter the replay holds, except names ending with a `skip` suffix);
    asserts each within `bound`."""
    largest = 0.0
    for name, state in actual.items():
        if name.endswith(skip):
            continue
        assert set(state) >= set(expected[name]), name
        for key, value in expected[name].items():
            gap = relative_gap(state[key], value)
            largest = max(largest, gap)
            assert gap <= bound, f"optimizer state {key} of {name} differs by {gap:.2e} > {bound:.2e}"
    return largest


def record_output_fields(model, fields: tuple[str, ...]) -> dict[str, list[float]]:
    """Record `fields` of the output of every forward of `model` (e.g. the loss parts), in call order. Register it
    before `replay`; the lists fill while the trainer runs."""
    recorded: dict[str, list[float]] = {name: [] for name in fields}

    def hook(module, args, output):
        for name in fields:
            value = getattr(output, name)
            recorded[name].append(float(value.detach() if torch.is_tensor(value) else value))

    model.register_forward_hook(hook)
    return recorded


# ---------------------------------------------------------------- faults a trajectory test must catch
def schedule_off_by_one(monkeypatch):
    """Every schedule (lr, weight decay, momentum) evaluated one step late."""
    from hf_mim.trainers import pretraining_trainer

    real = pretraining_trainer.warmup_then_cosine
    monkeypatch.setattr(pretraining_trainer, "warmup_then_cosine", lambda step, *a, **k: real(step + 1, *a, **k))


def ema_before_optimizer_step(monkeypatch):
    """The EMA teacher update moved from after to before the optimizer step."""
    from hf_mim.trainers import pretraining_trainer

    callback = pretraining_trainer._ScheduleCallback
    monkeypatch.setattr(callback, "on_step_end", lambda self, args, state, control, **kw: None)

    def before(self, args, state, control, **kwargs):
        self.trainer.update_teacher(state.global_step)

    monkeypatch.setattr(callback, "on_pre_optimizer_step", before, raising=False)


def assert_fault_caught(compare, fault_name: str, *compared) -> None:
    """An injected fault must fail `compare(*compared)` twice: with the schedule values checked, and on the
    trajectory alone (`schedules=False`), so a fault that leaves the logged schedule intact is still caught."""
    with pytest.raises(AssertionError) as caught:
        compare(*compared)
    print(fault_name, "caught:", str(caught.value).splitlines()[0])
    with pytest.raises(AssertionError) as caught:
        compare(*compared, schedules=False)
    print(fault_name, "caught by the trajectory:", str(caught.value).splitlines()[0])

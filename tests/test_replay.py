"""The replay memory: a uniform sample of every generated input, replayed in the student's updates."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from conftest import K, SeesStudentInputs

from dfad_lightning.parts import StudentSteps
from dfad_lightning.parts.memory import ReplayMemory


def test_the_memory_keeps_a_uniform_sample_of_everything_pushed():
    memory = ReplayMemory(100, (1,), (1,))
    for start in range(0, 10_000, 50):
        batch = torch.arange(start, start + 50, dtype=torch.float32).view(50, 1)
        memory.push(batch, -batch)
    assert memory.seen == 10_000 and len(memory) == 100
    kept = memory.samples.flatten()
    assert len(kept.unique()) == 100  # no sample twice
    assert torch.equal(memory.outputs.flatten(), -kept)  # each sample kept with its own output
    # Uniform over the history: about a tenth from each tenth of the stream (binomial, n=100, p=0.1).
    per_tenth = torch.bincount((kept // 1000).long(), minlength=10)
    assert per_tenth.max() <= 25 and kept.mean().item() == pytest.approx(5000, rel=0.3)


def test_every_draw_is_new_and_returns_the_outputs_of_its_samples():
    memory = ReplayMemory(64, (1,), (2,))
    batch = torch.arange(64.0).view(64, 1)
    memory.push(batch, torch.cat([batch, 2 * batch], 1))
    (x1, out1), (x2, out2) = memory.sample(16), memory.sample(16)
    assert not torch.equal(x1, x2)  # two draws between pushes differ
    for x, out in ((x1, out1), (x2, out2)):
        assert torch.equal(out, torch.cat([x, 2 * x], 1))


def test_the_memory_is_deterministic_and_travels_in_the_state_dict():
    a, b = ReplayMemory(8, (2,), (1,)), ReplayMemory(8, (2,), (1,))
    for memory in (a, b):
        for i in range(5):
            memory.push(torch.full((4, 2), float(i)), torch.full((4, 1), float(i)))
        memory.sample(3)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.sample(6)[0], b.sample(6)[0])
    restored = ReplayMemory(8, (2,), (1,))
    restored.load_state_dict(a.state_dict())
    assert (restored.seen, restored.drawn) == (20, 2) and torch.equal(restored.samples, a.samples)
    assert torch.equal(restored.outputs, a.outputs) and torch.equal(restored.sample(5)[0], a.sample(5)[0])
    a.push(torch.ones(3, 2), torch.ones(3, 1))
    restored.push(torch.ones(3, 2), torch.ones(3, 1))
    assert torch.equal(a.samples, restored.samples)


def test_an_empty_memory_cannot_be_sampled():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayMemory(4, (1,), (1,)).sample(1)


def test_student_steps_add_past_samples_after_the_first(tmp_path, make_system, fit):
    system = make_system(cls=SeesStudentInputs, learning={"replay_size": 32, "replay_fraction": 0.5})
    fit(system, tmp_path, epochs=1)
    assert system.sizes[0] == 8 and set(system.sizes[1:]) == {12}  # batch 8, plus 4 from the memory
    assert system.learning.memory is not None and system.learning.memory.seen == 4 * K * 8
    state = system.state_dict()
    assert "learning.memory.samples" in state and state["learning.memory.outputs"].shape == (32, 10)
    # a draw in every step but the first
    assert state["learning.memory._extra_state"] == {"seen": 4 * K * 8, "drawn": 4 * K - 1}
    restored = make_system(learning={"replay_size": 32})
    restored.on_load_checkpoint({"state_dict": state})  # makes the memory the checkpoint holds
    restored.load_state_dict(state)
    assert restored.learning.memory is not None and torch.equal(
        restored.learning.memory.samples, system.learning.memory.samples
    )
    assert torch.equal(restored.learning.memory.outputs, system.learning.memory.outputs)


class SeesReplay(StudentSteps):
    """Records the inputs of every student update and the teacher outputs they are trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _replayed(self, x, teacher_out):
        x, teacher_out = super()._replayed(x, teacher_out)
        self.updates.append((x.clone(), teacher_out.clone()))
        return x, teacher_out


def test_replayed_samples_are_drawn_anew_for_each_update_with_the_teachers_outputs(tmp_path, make_system, fit):
    system = make_system(learning=partial(SeesReplay, steps=K, reuse=2, replay_size=32))
    fit(system, tmp_path, epochs=1)
    (x1, _), (x2, _) = system.learning.updates[2:4]  # the second step's two updates
    assert torch.equal(x1[:8], x2[:8]) and not torch.equal(x1[8:], x2[8:])  # same fresh half, new past half
    system.eval()
    with torch.no_grad():
        for x, out in system.learning.updates[2:]:  # what the memory gives is what the frozen teacher says
            assert torch.allclose(out, system.teacher(x), atol=1e-5)


def test_a_half_size_memory_stores_bfloat16_and_the_student_steps_still_run(tmp_path, make_system, fit):
    system = make_system(
        cls=SeesStudentInputs, learning={"replay_size": 32, "replay_fraction": 0.5, "replay_dtype": "bfloat16"}
    )
    fit(system, tmp_path, epochs=1)
    assert (
        system.learning.memory is not None
        and system.learning.memory.samples.dtype == system.learning.memory.outputs.dtype == torch.bfloat16
    )
    assert set(system.sizes[1:]) == {12} and system.learning.memory.samples.abs().sum() > 0
    memory = ReplayMemory(4, (2,), (1,), torch.float16)
    memory.push(torch.full((3, 2), 1 / 3), torch.ones(3, 1))
    x, out = memory.sample(2)
    assert x.dtype == out.dtype == torch.float16 and float(x[0, 0]) == pytest.approx(1 / 3, abs=1e-3)


def test_a_replay_memory_too_large_to_ignore_warns_with_the_keys_to_change(tmp_path, monkeypatch, make_system):
    monkeypatch.setattr("dfad_lightning.parts.learning.REPLAY_WARN_BYTES", 32 * (64 + 10) * 4 - 1)  # 32 of 1x8x8 and 10
    system = make_system(learning={"replay_size": 32})
    expected = r"32 samples of 1x8x8 .* in float32.*system\.learning\.replay_size.*replay_dtype=bfloat16"
    with pytest.warns(UserWarning, match=expected):
        system.learning._new_memory((1, 8, 8), (10,), torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_system(learning={"replay_size": 32, "replay_dtype": "bfloat16"}).learning._new_memory(
            (1, 8, 8), (10,), torch.device("cpu")
        )

"""Golden values of the loop: a few iterations at a fixed seed give bitwise the same networks as when recorded.

A restructuring of the training loop must not change its arithmetic. Each case runs a short
distillation through ``run(cfg)`` (the path ``train.py`` takes) on one thread, then hashes every
tensor of the student, its moving average, the generator (with the learnt input scale and shift)
and the replay memory in the last checkpoint, and compares them with ``tests/golden/loop.json``.

The hashes are exact, so they hold only on the kind of CPU they were recorded on (another vector
unit sums in another order): elsewhere the test is skipped, saying so. After a change that is
meant to change the arithmetic, record them again with ``DFAD_GOLDEN_WRITE=1 pytest
tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from dfad_lightning.systems.dfad import migrate_state
from dfad_lightning.tasks import run

GOLDEN = Path(__file__).parent / "golden" / "loop.json"
WRITE = os.environ.get("DFAD_GOLDEN_WRITE") == "1"

# Three cases: the paper's algorithm; the recipe on a teacher without BatchNorm (priors, replay,
# reuse, moving average, warm-up); and on one with BatchNorm (its prior, minibatches, input scale).
CASES: dict[str, list[str]] = {
    "paper": ["recipe=paper"],
    "robust": ["recipe=robust"],
    "robust_bn": ["recipe=robust", "teacher=cifar_resnet8", "data.batch_size=64"],
}
# Which part of the system each checkpoint entry belongs to, by the start of its name.
GROUPS = {
    "student_ema": ("average.model.module.",),
    "student": ("student.",),
    "generator": ("generator.", "inputs.affine."),
    "memory": ("learning.memory.",),
}


def group_of(key: str) -> str | None:
    """The part of the system a checkpoint's state-dict entry belongs to, or ``None`` (counters, scores)."""
    return next((name for name, prefixes in GROUPS.items() if key.startswith(prefixes)), None)


def fingerprint(state: dict[str, object]) -> dict[str, dict[str, str]]:
    """The SHA-256 of every tensor in ``state``, by group and by name within it."""
    found: dict[str, dict[str, str]] = {}
    for key, value in state.items():
        group = group_of(key)
        if group is None or not isinstance(value, torch.Tensor):
            continue
        data = value.detach().cpu().reshape(-1)  # 1-d: a 0-d tensor has no byte view
        digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes())
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        found.setdefault(group, {})[key] = digest.hexdigest()
    return found


@pytest.fixture(scope="module")
def recorded() -> dict[str, object]:
    """The recorded hashes, each entry under today's name (the paper's case was recorded in checkpoint format 1)."""
    if WRITE or not GOLDEN.is_file():
        return {}
    golden = json.loads(GOLDEN.read_text())
    for case, groups in golden["cases"].items():
        golden["cases"][case] = {group: migrate_state(entries) for group, entries in groups.items()}
    return golden


@pytest.mark.parametrize("case", list(CASES))
def test_the_loop_gives_bitwise_the_recorded_networks(case, make_cfg, tmp_path, recorded):
    capability = torch.backends.cpu.get_cpu_capability()
    if recorded and recorded["cpu_capability"] != capability:
        pytest.skip(f"golden values recorded on a {recorded['cpu_capability']} CPU, this one is {capability}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(make_cfg(*CASES[case], "seed=0", output_dir=tmp_path / case))
    finally:
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / case / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    found = fingerprint(state)
    if WRITE:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden["cpu_capability"] = capability
        golden.setdefault("cases", {})[case] = found
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {case} in {GOLDEN}")
    assert recorded, f"no golden values: record them with DFAD_GOLDEN_WRITE=1 pytest {Path(__file__).name}"
    expected = recorded["cases"][case]
    assert set(found) == set(expected), f"parts in the checkpoint: {sorted(found)}, recorded: {sorted(expected)}"
    for group in expected:
        changed = [k for k in expected[group] if found[group].get(k) != expected[group][k]]
        assert set(found[group]) == set(expected[group]), f"{case}: the {group}'s entries differ"
        assert not changed, f"{case}: the {group} differs from the recorded one in {changed[:3]}"

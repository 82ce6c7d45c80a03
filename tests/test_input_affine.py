"""The learnt scale and shift of the generated inputs, where the BatchNorm prior sets their contrast."""

from __future__ import annotations

import pytest
import torch
from conftest import same, snapshot

from dfad_lightning.errors import ConfigError


def test_input_affine_scales_and_shifts_every_generated_input_and_learns_faster(tmp_path, make_system, fit):
    from dfad_lightning.parts.inputs import INPUT_AFFINE_LR_FACTOR

    plain = make_system()
    assert plain.inputs.affine is None and len(plain.configure_optimizers()[0][1].param_groups) == 1
    system = make_system(inputs={"input_affine": True})
    assert system.inputs.affine is not None
    z = torch.randn(4, 16)
    with torch.no_grad():
        system.inputs.affine.scale.fill_(0.5)
        system.inputs.affine.shift.fill_(0.25)
        assert torch.allclose(system.synthesize(z), 0.5 * system.generator(z) + 0.25)
        system.inputs.affine.scale.fill_(1.0)
        system.inputs.affine.shift.fill_(0.0)
    (_, opt_g), _ = system.configure_optimizers()
    assert [len(g["params"]) for g in opt_g.param_groups][1:] == [2]
    assert opt_g.param_groups[1]["lr"] == INPUT_AFFINE_LR_FACTOR * opt_g.param_groups[0]["lr"]
    before = snapshot(system.generator)
    fit(system, tmp_path, epochs=1)
    assert system.inputs.affine.scale.item() != 1.0 and system.inputs.affine.shift.item() != 0.0  # trained with G
    assert not same(before, snapshot(system.generator))


def test_resuming_with_input_affine_changed_names_the_key(make_system):
    without, with_ = make_system().state_dict(), make_system(inputs={"input_affine": True}).state_dict()
    with pytest.raises(ConfigError, match=r"^system\.inputs\.input_affine: .* trained without .*input_affine=false$"):
        make_system(inputs={"input_affine": True}).on_load_checkpoint({"state_dict": without})
    with pytest.raises(ConfigError, match=r"^system\.inputs\.input_affine: .* trained with .*input_affine=true$"):
        make_system().on_load_checkpoint({"state_dict": with_})
    restored = make_system(inputs={"input_affine": True})
    restored.on_load_checkpoint({"state_dict": with_})
    restored.load_state_dict(with_)  # the same setting loads


def test_automatic_input_affine_only_where_the_batchnorm_prior_acts(make_system):
    from dfad_lightning.networks import ScaleShift

    assert isinstance(
        make_system(batchnorm_teacher=True, objective={"bn_prior": 1.0}, inputs={"input_affine": "auto"}).inputs.affine,
        ScaleShift,
    )
    unanchored = make_system(batchnorm_teacher=True, objective={"bn_prior": 0.0}, inputs={"input_affine": "auto"})
    assert unanchored.inputs.affine is None  # no prior: nothing tells the contrast
    assert (
        make_system(objective={"bn_prior": 1.0}, inputs={"input_affine": "auto"}).inputs.affine is None
    )  # LeNet-5: no BatchNorm
    with pytest.raises(ConfigError, match=r"^inputs\.input_affine: must be true or false, or auto, got 'yes'$"):
        make_system(inputs={"input_affine": "yes"})

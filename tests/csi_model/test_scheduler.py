import pytest
import torch

from csi_model.scheduler import StepDecayLR


def make(**kwargs) -> tuple[StepDecayLR, torch.optim.Optimizer]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    args = dict(lr=1.0, lr_decay=0.5, min_lr=0.1, decay_every=10) | kwargs
    return StepDecayLR(opt, **args), opt


def run(sched: StepDecayLR, n: int) -> list[float]:
    return [sched.step() for _ in range(n)]


def test_decays_every_period_down_to_the_floor():
    sched, opt = make()
    lrs = run(sched, 60)
    assert lrs[:9] == [1.0] * 9
    assert lrs[9] == 0.5 and lrs[19] == 0.25 and lrs[29] == 0.125
    assert lrs[39] == pytest.approx(0.1) and lrs[49] == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == lrs[-1]


def test_default_period_is_1000_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = StepDecayLR(opt, lr=1e-3, lr_decay=0.9, min_lr=1e-4)
    lrs = run(sched, 1000)
    assert lrs[998] == 1e-3 and lrs[999] == pytest.approx(9e-4)


def test_hold_postpones_decay():
    sched, _ = make(hold_steps=25)
    lrs = run(sched, 40)
    assert lrs[9] == 1.0 and lrs[19] == 1.0  # steps 10 and 20 fall in the hold
    assert lrs[29] == 0.5
    assert not sched.in_hold


def test_in_hold_is_false_without_hold():
    sched, _ = make()
    assert not sched.in_hold


def test_warmup_rises_linearly_from_zero():
    sched, _ = make(warmup_steps=4, decay_every=1000)
    assert run(sched, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_state_round_trip_restores_the_decayed_lr():
    sched, _ = make(warmup_steps=3)
    run(sched, 25)
    state = sched.state_dict()
    continued = run(sched, 30)
    resumed, opt = make(warmup_steps=3)
    resumed.load_state_dict(state)
    assert run(resumed, 30) == continued
    assert opt.param_groups[0]["lr"] == continued[-1]

"""SkipParameterInit: torch.nn.init functions are skipped inside the mode, everything else runs."""

from __future__ import annotations

import torch

from fabric_strategies.init_context import SkipParameterInit


def test_initialisers_return_their_tensor_untouched():
    tensor = torch.zeros(3)
    with SkipParameterInit():
        assert torch.nn.init.normal_(tensor) is tensor
        assert torch.nn.init.constant_(tensor=tensor, val=5.0) is tensor
        other = torch.ones(2) + 1  # ordinary operations still run
    assert torch.equal(tensor, torch.zeros(3))
    assert torch.equal(other, torch.full((2,), 2.0))


def test_modules_built_inside_skip_their_reset_and_outside_initialise_again():
    with SkipParameterInit():
        torch.manual_seed(0)
        skipped = torch.nn.Linear(8, 8)
    torch.manual_seed(0)
    initialised = torch.nn.Linear(8, 8)
    assert not torch.equal(skipped.weight, initialised.weight)
    torch.manual_seed(0)
    assert torch.equal(torch.nn.Linear(8, 8).weight, initialised.weight)

"""SingleDeviceCollective: every primitive is local, and invalid arguments still fail."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from fabric_strategies import SingleDeviceCollective


def test_primitives_return_the_local_values():
    collective = SingleDeviceCollective().setup()
    assert (collective.rank, collective.world_size) == (0, 1)
    assert SingleDeviceCollective.is_available()
    assert SingleDeviceCollective.is_initialized()
    tensor = torch.tensor([1.0, 2.0])
    assert collective.broadcast(tensor, src=0) is tensor
    assert collective.all_reduce(tensor, op="max") is tensor
    assert collective.reduce(tensor, dst=0) is tensor
    assert torch.equal(collective.all_gather([torch.zeros(2)], tensor)[0], tensor)
    assert torch.equal(collective.gather(tensor, [torch.zeros(2)], dst=0)[0], tensor)
    assert torch.equal(collective.scatter(torch.zeros(2), [tensor], src=0), tensor)
    assert torch.equal(collective.reduce_scatter(torch.zeros(2), [tensor]), tensor)
    assert torch.equal(collective.all_to_all([torch.zeros(2)], [tensor])[0], tensor)
    assert collective.all_gather_object({"a": 1}) == [{"a": 1}]
    assert collective.broadcast_object("x") == "x"
    collective.barrier()
    assert collective.create_group(ranks=[0]) is collective
    assert collective.teardown() is collective


def test_invalid_arguments_fail_even_without_communication():
    collective = SingleDeviceCollective()
    tensor = torch.ones(1)
    with pytest.raises(ValueError, match=r"'median'"):
        collective.all_reduce(tensor, op="median")
    with pytest.raises(ValueError, match=r"src=1"):
        collective.broadcast(tensor, src=1)
    with pytest.raises(ValueError, match=r"exactly one tensor.*2 tensors"):
        collective.all_gather([torch.zeros(1), torch.zeros(1)], tensor)
    with pytest.raises(ValueError, match="ranks=\\[0, 1\\]"):
        collective.create_group(ranks=[0, 1])
    with pytest.raises(RuntimeError, match=r"no other rank"):
        collective.send(tensor, dst=1)
    with pytest.raises(RuntimeError, match=r"no other rank"):
        collective.recv(tensor, src=1)


def test_object_collectives_have_single_process_semantics():
    collective = SingleDeviceCollective()
    objects = ["a", {"b": 1}]
    assert collective.broadcast_object_list(objects, src=0) is objects
    assert collective.gather_object({"rank": 0}, [None], dst=0) == [{"rank": 0}]
    assert collective.scatter_object_list([None], [{"chunk": 0}], src=0) == [{"chunk": 0}]
    collective.monitored_barrier(timeout=timedelta(seconds=1), wait_all_ranks=True)
    with pytest.raises(ValueError, match=r"src=1"):
        collective.broadcast_object_list(objects, src=1)
    with pytest.raises(ValueError, match=r"dst=1"):
        collective.gather_object(1, [None], dst=1)
    with pytest.raises(ValueError, match=r"object_gather_list.*exactly one slot.*got None"):
        collective.gather_object(1, None, dst=0)
    with pytest.raises(ValueError, match=r"scatter_object_input_list.*exactly one object.*2 objects"):
        collective.scatter_object_list([None], [1, 2], src=0)


def test_both_collectives_offer_the_same_methods():
    from fabric_strategies import Collective, TorchCollective

    public = {name for name in vars(Collective) if not name.startswith("_")}
    assert {"broadcast_object_list", "gather_object", "scatter_object_list", "monitored_barrier"} <= public
    for cls in (SingleDeviceCollective, TorchCollective):
        assert not getattr(cls, "__abstractmethods__", None), cls

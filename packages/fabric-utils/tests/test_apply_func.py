from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_testing import RunIf
from fabric_utils import apply_to_collection, apply_to_collections, convert_tensors_to_scalars, move_data_to_device

Point = namedtuple("Point", ["x", "y"])


class Batch(NamedTuple):
    inputs: torch.Tensor
    label: str


@dataclasses.dataclass
class Sample:
    image: torch.Tensor
    meta: dict[str, Any]
    name: str = "sample"


@dataclasses.dataclass(frozen=True)
class FrozenSample:
    image: torch.Tensor
    extra: list[torch.Tensor]


@dataclasses.dataclass
class WithDerived:
    values: torch.Tensor
    total: torch.Tensor = dataclasses.field(init=False)
    post_init_calls: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total = self.values.sum()
        self.post_init_calls += 1


def double(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def test_a_matching_element_itself_is_mapped() -> None:
    assert torch.equal(apply_to_collection(torch.tensor([1, 2]), torch.Tensor, double), torch.tensor([2, 4]))


def test_nested_dicts_lists_and_tuples_keep_their_types() -> None:
    data = {"a": [torch.tensor(1), (torch.tensor(2), "text", 3)], "b": {"c": torch.tensor(4)}}
    out = apply_to_collection(data, torch.Tensor, double)
    assert type(out) is dict
    assert type(out["a"]) is list
    assert type(out["a"][1]) is tuple
    assert out["a"][0].item() == 2
    assert out["a"][1][0].item() == 4
    assert out["a"][1][1:] == ("text", 3)
    assert out["b"]["c"].item() == 8
    assert data["a"][0].item() == 1, "the input must not be modified"


def test_ordered_dict_keeps_type_and_order() -> None:
    data = OrderedDict([("z", torch.tensor(1)), ("a", torch.tensor(2)), ("m", torch.tensor(3))])
    out = apply_to_collection(data, torch.Tensor, double)
    assert type(out) is OrderedDict
    assert list(out) == ["z", "a", "m"]
    assert [v.item() for v in out.values()] == [2, 4, 6]


def test_defaultdict_keeps_its_default_factory() -> None:
    data: defaultdict[str, list[int]] = defaultdict(list, {"x": torch.tensor(5)})
    out = apply_to_collection(data, torch.Tensor, double)
    assert type(out) is defaultdict
    assert out.default_factory is list
    assert out["x"].item() == 10
    assert out["missing"] == []


def test_namedtuples_keep_their_type() -> None:
    out = apply_to_collection(Point(torch.tensor(1), torch.tensor(2)), torch.Tensor, double)
    assert type(out) is Point
    assert (out.x.item(), out.y.item()) == (2, 4)
    typed = apply_to_collection(Batch(torch.ones(2), "lbl"), torch.Tensor, double)
    assert type(typed) is Batch
    assert typed.label == "lbl"
    assert torch.equal(typed.inputs, torch.full((2,), 2.0))


def test_sets_are_traversed() -> None:
    assert apply_to_collection({1, 2, 3}, int, lambda x: x * 10) == {10, 20, 30}
    out = apply_to_collection(frozenset({1, 2}), int, lambda x: -x)
    assert type(out) is frozenset
    assert out == frozenset({-1, -2})


def test_dataclass_is_rebuilt_and_the_original_untouched() -> None:
    sample = Sample(image=torch.ones(2), meta={"scale": torch.tensor(3.0)})
    out = apply_to_collection(sample, torch.Tensor, double)
    assert type(out) is Sample
    assert out is not sample
    assert torch.equal(out.image, torch.full((2,), 2.0))
    assert out.meta["scale"].item() == 6.0
    assert out.name == "sample"
    assert torch.equal(sample.image, torch.ones(2))
    assert sample.meta["scale"].item() == 3.0


def test_frozen_dataclass_is_mapped_into_a_new_instance() -> None:
    sample = FrozenSample(image=torch.ones(1), extra=[torch.tensor(2.0)])
    out = apply_to_collection(sample, torch.Tensor, double)
    assert type(out) is FrozenSample
    assert out.image.item() == 2.0
    assert out.extra[0].item() == 4.0
    assert sample.image.item() == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.image = torch.zeros(1)  # type: ignore[misc]


def test_dataclass_fields_outside_init_are_mapped_without_rerunning_post_init() -> None:
    sample = WithDerived(torch.tensor([1.0, 2.0]))
    out = apply_to_collection(sample, torch.Tensor, double)
    assert out.total.item() == 6.0, "init=False fields are mapped too"
    assert out.post_init_calls == 1, "__post_init__ must not run again"
    assert sample.total.item() == 3.0


def test_dataclass_inside_collections() -> None:
    data = {"samples": [Sample(torch.ones(1), {}), Sample(torch.zeros(1), {})]}
    out = apply_to_collection(data, torch.Tensor, lambda t: t + 1)
    assert [s.image.item() for s in out["samples"]] == [2.0, 1.0]


def test_wrong_dtype_elements_are_left_alone() -> None:
    class Special(torch.Tensor):
        pass

    special = torch.ones(1).as_subclass(Special)
    out = apply_to_collection([torch.ones(1), special], torch.Tensor, double, wrong_dtype=Special)
    assert out[0].item() == 2.0
    assert out[1] is special


def test_include_none_false_drops_none_results_from_sequences_and_mappings() -> None:
    def none_for_odd(x: int) -> int | None:
        return None if x % 2 else x

    data = {"keep": 2, "drop": 1, "list": [1, 2, 3, 4], "tuple": (1, 2)}
    assert apply_to_collection(data, int, none_for_odd, include_none=False) == {
        "keep": 2,
        "list": [2, 4],
        "tuple": (2,),
    }
    assert apply_to_collection([1, 2], int, none_for_odd) == [None, 2]


def test_extra_args_and_kwargs_are_forwarded() -> None:
    out = apply_to_collection([1, 2], int, lambda x, a, b: x * a + b, 10, b=1)
    assert out == [11, 21]


def test_non_matching_leaves_and_strings_are_returned_as_they_are() -> None:
    marker = object()
    data = {"s": "abc", "b": b"xyz", "n": 3.5, "o": marker, "none": None}
    out = apply_to_collection(data, torch.Tensor, double)
    assert out == data
    assert out["o"] is marker
    assert apply_to_collection("abc", int, lambda x: x) == "abc"


class ReadOnlyMapping(Mapping[str, Any]):
    """A mapping whose constructor does not take key-value pairs."""

    def __init__(self, **values: Any) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_mapping_that_cannot_be_rebuilt_becomes_a_dict() -> None:
    out = apply_to_collection(ReadOnlyMapping(a=torch.tensor(1)), torch.Tensor, double)
    assert type(out) is dict
    assert out["a"].item() == 2


nested = st.recursive(
    st.integers(-100, 100) | st.text(max_size=3) | st.none(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(nested)
def test_identity_function_rebuilds_an_equal_structure(data: Any) -> None:
    assert apply_to_collection(data, int, lambda x: x) == data


@settings(max_examples=60, deadline=None)
@given(nested)
def test_mapping_reaches_every_int_leaf(data: Any) -> None:
    def ints(obj: Any) -> list[int]:
        if isinstance(obj, bool):
            return []
        if isinstance(obj, int):
            return [obj]
        if isinstance(obj, dict):
            return [i for v in obj.values() for i in ints(v)]
        if isinstance(obj, (list, tuple)):
            return [i for v in obj for i in ints(v)]
        return []

    out = apply_to_collection(data, int, lambda x: x + 1000)
    assert ints(out) == [i + 1000 for i in ints(data)]


def test_apply_to_collections_zips_two_structures() -> None:
    a = {"x": [torch.tensor(1), torch.tensor(2)], "p": Point(torch.tensor(3), 4)}
    b = {"x": [torch.tensor(10), torch.tensor(20)], "p": Point(torch.tensor(30), 40)}
    out = apply_to_collections(a, b, torch.Tensor, torch.add)
    assert [t.item() for t in out["x"]] == [11, 22]
    assert type(out["p"]) is Point
    assert out["p"].x.item() == 33
    assert out["p"].y == 4, "non-matching leaves come from the first collection"


def test_apply_to_collections_keeps_defaultdict_and_dataclasses() -> None:
    a = defaultdict(int, {"k": torch.tensor(1)})
    b = defaultdict(int, {"k": torch.tensor(2)})
    out = apply_to_collections(a, b, torch.Tensor, torch.mul)
    assert type(out) is defaultdict
    assert out.default_factory is int
    assert out["k"].item() == 2
    merged = apply_to_collections(
        FrozenSample(torch.ones(1), [torch.ones(1)]),
        FrozenSample(torch.ones(1), [torch.ones(1) * 5]),
        torch.Tensor,
        torch.add,
    )
    assert merged.image.item() == 2.0
    assert merged.extra[0].item() == 6.0


def test_apply_to_collections_rejects_different_structures() -> None:
    with pytest.raises(ValueError, match=r"different keys: \['a'\] vs \['b'\]"):
        apply_to_collections({"a": 1}, {"b": 1}, int, max)
    with pytest.raises(ValueError, match="different lengths: 2 vs 3"):
        apply_to_collections([1, 2], [1, 2, 3], int, max)


def test_move_data_to_device_moves_nested_tensors() -> None:
    batch = {
        "x": torch.ones(2),
        "pair": (torch.zeros(1), "label"),
        "sample": Sample(torch.ones(1), {"m": torch.ones(1)}),
    }
    moved = move_data_to_device(batch, "meta")
    assert moved["x"].device.type == "meta"
    assert moved["pair"][0].device.type == "meta"
    assert moved["pair"][1] == "label"
    assert moved["sample"].image.device.type == "meta"
    assert moved["sample"].meta["m"].device.type == "meta"
    assert batch["x"].device.type == "cpu", "the input is not modified"


def test_move_data_to_device_returns_tensors_already_there_unchanged() -> None:
    tensor = torch.ones(3)
    assert move_data_to_device(tensor, torch.device("cpu")) is tensor
    assert move_data_to_device([tensor], "cpu")[0] is tensor


class CustomBatch:
    """Knows how to move itself, like a transformers BatchEncoding."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.calls: list[torch.device] = []

    def to(self, device: torch.device) -> CustomBatch:
        self.calls.append(device)
        return CustomBatch(self.data.to(device))


class InPlaceBatch:
    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        self.device = device


def test_move_data_to_device_uses_the_to_method_of_other_objects() -> None:
    batch = CustomBatch(torch.ones(1))
    moved = move_data_to_device({"b": batch}, "meta")["b"]
    assert batch.calls == [torch.device("meta")]
    assert moved.data.device.type == "meta"
    in_place = InPlaceBatch()
    assert move_data_to_device(in_place, "meta") is in_place
    assert in_place.device == torch.device("meta")


def test_move_data_to_device_leaves_modules_alone() -> None:
    module = torch.nn.Linear(2, 2)
    assert move_data_to_device([module], "meta")[0] is module
    assert module.weight.device.type == "cpu"


def test_move_data_to_device_rejects_bad_devices() -> None:
    with pytest.raises(TypeError, match=r"got 1\.5"):
        move_data_to_device(torch.ones(1), 1.5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        move_data_to_device(torch.ones(1), "not-a-device")


def test_convert_tensors_to_scalars() -> None:
    out = convert_tensors_to_scalars({"loss": torch.tensor(0.5), "acc": [torch.tensor([3])], "name": "x"})
    assert out == {"loss": 0.5, "acc": [3], "name": "x"}
    assert type(out["loss"]) is float
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        convert_tensors_to_scalars([torch.ones(2)])


@RunIf(min_cuda_gpus=1)
def test_pinned_tensors_move_to_cuda_with_their_values() -> None:
    batch = {"x": torch.arange(4.0).pin_memory(), "y": torch.ones(2)}
    moved = move_data_to_device(batch, 0)
    torch.cuda.synchronize()
    assert moved["x"].device == torch.device("cuda", 0)
    assert moved["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert moved["y"].device.type == "cuda"

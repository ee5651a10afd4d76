from __future__ import annotations

import re

import pytest

from fabric_environments.hostlist import expand_hostlist, expand_task_counts


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node[01-03,7],gpu5", ["node01", "node02", "node03", "node7", "gpu5"]),
        ("localhost", ["localhost"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[5]", ["n5"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("a[1-2].cluster.org,b", ["a1.cluster.org", "a2.cluster.org", "b"]),
        ("a1 a2\tb[3-4]", ["a1", "a2", "b3", "b4"]),
        ("n[1, 3]", ["n1", "n3"]),
        ("", []),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    ("hostlist", "problem"),
    [
        ("node[01-03", "'[' without a matching ']'"),
        ("node01]", "']' without a matching '['"),
        ("n[[1]]", "nested brackets"),
        ("n[]", "empty brackets"),
        ("n[a-c]", "'a-c' is neither a number nor a range"),
        ("n[1-]", "'1-' is neither a number nor a range"),
        ("n[5-2]", "'5-2' runs backwards"),
    ],
)
def test_malformed_hostlists_raise_naming_them(hostlist: str, problem: str) -> None:
    with pytest.raises(ValueError, match="Malformed host list") as info:
        expand_hostlist(hostlist)
    assert repr(hostlist) in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("counts", "expanded"),
    [("4", [4]), ("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("8,4(x2)", [8, 4, 4])],
)
def test_expand_task_counts(counts: str, expanded: list[int]) -> None:
    assert expand_task_counts(counts) == expanded


@pytest.mark.parametrize("counts", ["", "two", "2(3)", "2(x)", "-1"])
def test_malformed_task_counts(counts: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Malformed task count {counts!r}")):
        expand_task_counts(counts)

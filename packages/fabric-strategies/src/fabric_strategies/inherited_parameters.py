"""Constructors that take their parent's parameters without listing them again, and pass extra keywords on.

Lightning Fabric's strategies take the parts they are built from (accelerator, devices, cluster environment,
checkpoint IO, precision) and their process settings by keyword and by position, each class in its own order, and
each of its constructors lists them again and passes them on one by one. Here the parent's ``__init__`` lists them
once, and a subclass decorates its ``__init__`` with :func:`takes_parameters_of`::

    class DDPStrategy(ParallelStrategy):
        @takes_parameters_of(ParallelStrategy, START_METHOD_POPEN)
        def __init__(self, inherited: dict[str, Any], /, **kwargs: Any) -> None:
            super().__init__(**inherited)

The decorated ``__init__`` has the whole signature, the parent's parameters spliced in among the subclass's own: it
is what ``inspect.signature``, ``help()`` and introspecting IDEs show, and every call is bound against it, so
arguments passed by position land where they always did. The body gets the parent's arguments as one mapping and
its own parameters as usual.

Constructors that pass their extra keyword arguments on (to ``DistributedDataParallel``, ``fully_shard``, a
``DeepSpeedConfig``) check them with :func:`check_passed_keywords` first.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from inspect import Parameter
from typing import Any

Init = Callable[..., None]


def takes_parameters_of(
    parent: type,
    *replaced: Parameter,
    names: Sequence[str] | None = None,
    after: int = 0,
    keyword_only: bool = False,
) -> Callable[[Init], Init]:
    """Give the decorated ``__init__(self, inherited, /, ...own)`` the parameters of ``parent.__init__`` as well.

    Args:
        parent: the class whose constructor parameters the subclass takes and passes on.
        replaced: parameters that stand instead of the parent's of the same name (to give another default).
        names: which of the parent's parameters the subclass takes, in this order (default: all, in the parent's).
        after: how many of the body's own parameters come before the parent's in the signature.
        keyword_only: whether the parent's parameters are keyword-only here (else positional or keyword).
    """
    parent_parameters = list(inspect.signature(parent).parameters.values())
    by_name = {p.name: p for p in parent_parameters} | {p.name: p for p in replaced}
    kind = Parameter.KEYWORD_ONLY if keyword_only else Parameter.POSITIONAL_OR_KEYWORD
    taken = [by_name[name].replace(kind=kind) for name in (names or [p.name for p in parent_parameters])]

    def decorate(init: Init) -> Init:
        body = inspect.signature(init)
        self_parameter, _, *own = body.parameters.values()  # ``self`` is positional-only there, as ``inherited`` is
        self_parameter = self_parameter.replace(kind=Parameter.POSITIONAL_OR_KEYWORD)
        signature = body.replace(parameters=[self_parameter, *own[:after], *taken, *own[after:]])
        var_keyword = next((p.name for p in own if p.kind is Parameter.VAR_KEYWORD), None)

        @functools.wraps(init)
        def bind_and_init(self: Any, *args: Any, **kwargs: Any) -> None:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            del arguments[self_parameter.name]
            extra = arguments.pop(var_keyword) if var_keyword is not None else {}
            inherited = {p.name: arguments.pop(p.name) for p in taken}
            init(self, inherited, **arguments, **extra)

        bind_and_init.__signature__ = signature  # type: ignore[attr-defined]
        return bind_and_init

    return decorate


def check_passed_keywords(keywords: Mapping[str, Any], accepted: Sequence[str], refusal: str) -> None:
    """Raise ``TypeError`` unless every name in ``keywords`` is ``accepted``: ``refusal`` with the unknown names (its
    ``{}``), followed by the accepted ones."""
    unknown = sorted(set(keywords) - set(accepted))
    if unknown:
        raise TypeError(f"{refusal.format(unknown)} Choose from: {', '.join(accepted)}")

"""A dict whose keys can also be read and written as attributes."""

from __future__ import annotations

from typing import Any


class AttributeDict(dict):  # type: ignore[type-arg]
    """``AttributeDict(lr=0.1).lr == 0.1``; missing attributes raise ``AttributeError`` naming the key."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {key!r}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __repr__(self) -> str:
        if not self:
            return ""
        width = max(len(str(k)) for k in self)
        return "\n".join(f"{f'{k!r}':>{width + 2}}: {v!r}" for k, v in sorted(self.items(), key=lambda kv: str(kv[0])))

"""What fabric-io raises for a checkpoint it refuses to read or cannot write, and the checks that raise it."""

from __future__ import annotations

import errno
import os

from fabric_utils import PathLike


class UnsafeCheckpointError(ValueError):
    """A restricted load (the default, ``weights_only=True``) refused a checkpoint: it holds something other than
    tensors, plain data and its format's own records (a pickled object could run code while it is read), or it names
    a file outside its own directory."""


def resolve_inside(directory: PathLike, name: str, *, what: str = "file") -> str:
    """The real path of ``name``, a file of the checkpoint directory ``directory`` as the checkpoint names it.

    Raises ``UnsafeCheckpointError`` naming ``name`` and ``directory`` when it lies outside the directory: an absolute
    path, ``..`` that climbs out, or a symbolic link that leads out. Loaders check every file a checkpoint names
    with it before they open one, so a checkpoint cannot make them read another checkpoint's (or any other) data.
    ``what`` says in the error what ``name`` is (e.g. ``"storage file of 'model.w'"``).
    """
    root = os.path.realpath(directory)
    if not isinstance(name, str) or not name or "\0" in name:
        reason = "which is not a file name"
    elif os.path.isabs(name):
        reason = "an absolute path"
    else:
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) == root and target != root:
            return target
        reason = f"which resolves to {target!r}"
    raise UnsafeCheckpointError(
        f"The checkpoint {os.fspath(directory)!r} names the {what} {name!r}, {reason}, outside the checkpoint "
        f"directory {root!r}; refusing to read it. Every file a checkpoint loads must lie inside its directory "
        "(this holds with weights_only=False too)."
    )


def no_space_error(path: PathLike, err: BaseException) -> OSError | None:
    """``OSError(ENOSPC, "No space left on device while saving <path>")`` when a full disk caused ``err`` (it, or an
    error in its chain of causes, has errno ``ENOSPC``); None otherwise. Raise it ``from err``.

    torch reports a full disk as ``[enforce fail at inline_container.cc] unexpected pos``; the ``OSError`` that
    says what happened is what that error was raised while handling.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return OSError(errno.ENOSPC, f"No space left on device while saving {os.fspath(path)!r}")
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None

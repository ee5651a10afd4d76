"""The help texts of the ``fabric`` command are plain text (what ``--help`` prints), not reStructuredText.

sphinx-click parses them as reStructuredText, where ``*.py`` opens an emphasis that never ends and fails the strict
build. This extension escapes the characters that start inline markup in the descriptions and option help texts
that sphinx-click hands over, so the reference shows exactly what ``fabric COMMAND --help`` prints.
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.application import Sphinx

_MARKUP = re.compile(r"([\\*`|])")
_TRAILING_UNDERSCORE = re.compile(r"(\w)_(?=\W|$)")  # name_ is a reference in reStructuredText


def escape_markup(text: str) -> str:
    """``text`` with every character that could start inline markup escaped."""
    return _TRAILING_UNDERSCORE.sub(r"\1\\_", _MARKUP.sub(r"\\\1", text))


def _escape_description(app: Sphinx, ctx: Any, lines: list[str]) -> None:
    for index, line in enumerate(lines):
        # sphinx-click keeps click's \b paragraphs as line blocks ("| text"): escape only the text after the bar
        prefix = "| " if line.startswith("| ") else ""
        lines[index] = prefix + escape_markup(line[len(prefix) :])


def _escape_option_help(app: Sphinx, ctx: Any, lines: list[str]) -> None:
    for index, line in enumerate(lines):
        body = line.lstrip()
        # the ".. option::" lines and the ":default:" fields are sphinx-click's own markup: leave them alone
        if not line.startswith(" ") or body.startswith((":", "| ")):
            continue
        lines[index] = line[: len(line) - len(body)] + escape_markup(body)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_click")
    app.connect("sphinx-click-process-description", _escape_description)
    app.connect("sphinx-click-process-options", _escape_option_help)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

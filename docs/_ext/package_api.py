"""``.. package-api:: fabric_core``: the API page of one package, generated from its ``__all__`` at build time;
``.. registry-table:: fabric_strategies.STRATEGY_REGISTRY``: the names a registry offers, with their descriptions.

The directive imports the package and writes, for every name in ``__all__`` (nothing else, nothing stale): a summary
table, then the entry itself with ``sphinx.ext.autodoc`` (classes with their public members, exceptions,
functions) or, for constants, registries and type aliases, a ``py:data`` entry whose text is the ``#:`` comment
above the assignment in the module that defines it. A class that the package only re-exports (defined and documented
by another ``fabric_*`` package, or nested in another class of the package) gets a short entry that links to its full
one, so that no class is described twice.

It also keeps docstring formatting problems of the packages from failing the strict build: a warning located in a
docstring is printed as a non-fatal message (``docstring warning (not fatal): ...``); every other warning, on the
guide pages and in the generated structure, still fails ``sphinx-build -W``.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import logging
import sys
import typing
from typing import Any

from docutils import nodes
from docutils.parsers.rst.states import RSTStateMachine, state_classes
from docutils.statemachine import StringList
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging as sphinx_logging
from sphinx.util.docutils import NullReporter, SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

_SIMPLE_VALUES = (str, int, float, bool, tuple, frozenset, datetime.timedelta)
_MAX_VALUE_LENGTH = 160


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj) and not _is_type_alias(obj):
        return "function"
    return "data"


def _is_type_alias(obj: Any) -> bool:
    return typing.get_origin(obj) is not None


def _data_comment(package: str, name: str, obj: Any) -> list[str]:
    """The ``#:`` comment above the assignment of ``name`` in the submodule of ``package`` that defines ``obj``."""
    modules = [m for key, m in sorted(sys.modules.items()) if key == package or key.startswith(package + ".")]
    for module in modules:
        if getattr(module, name, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        except Exception:  # a module without source: nothing to read
            continue
        lines = docs.get(("", name))
        if lines:
            return [line for line in lines if line is not None]
    return []


def _documented_elsewhere(package: str, name: str, obj: Any, objects: dict[str, Any]) -> str | None:
    """Where the class ``obj`` has its full entry when ``package`` only re-exports it, else None.

    That is the ``fabric_*`` package that defines and exports it (``fabric_strategies.UnsafeCheckpointError`` is
    ``fabric_io``'s), or another class of ``package`` that holds it (``RedOpType`` is ``ReduceOp.RedOpType``).
    Documenting such a class twice in full would register its defining path twice.
    """
    if not inspect.isclass(obj):
        return None
    home = obj.__module__.split(".")[0]
    home_module = sys.modules.get(home)
    exported = name in getattr(home_module, "__all__", ()) and getattr(home_module, name, None) is obj
    if home != package and home.startswith("fabric_") and exported:
        return f"{home}.{name}"
    for other, value in objects.items():
        if other != name and inspect.isclass(value) and vars(value).get(obj.__name__) is obj:
            return f"{package}.{other}.{obj.__name__}"
    return None


def _first_sentence(doc: list[str]) -> str:
    """The first sentence of the first paragraph, never cut inside inline markup (an odd number of backquotes)."""
    paragraph: list[str] = []
    for line in doc:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = " ".join(paragraph)
    for end in range(len(text) - 1):
        if text[end] == "." and text[end + 1] == " " and text[:end].count("`") % 2 == 0:
            return text[: end + 1]
    return text[:-2] + ":" if text.endswith("::") else text


def _value_option(obj: Any) -> str | None:
    """The value to show for a constant: type aliases always, simple values when their repr is short."""
    text = repr(obj)
    if "\n" in text:
        return None
    if _is_type_alias(obj) or (isinstance(obj, _SIMPLE_VALUES) and len(text) <= _MAX_VALUE_LENGTH):
        return text
    return None


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    public = module.split(".")[0]  # classes of this monorepo are documented under their package's name
    if public.startswith("fabric_") and getattr(sys.modules.get(public), cls.__name__, None) is cls:
        return f"{public}.{cls.__name__}"
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class PackageAPI(SphinxDirective):
    """Document every name of a package's ``__all__``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        package_name = self.arguments[0]
        package = importlib.import_module(package_name)
        names = list(getattr(package, "__all__", []))
        if not names:
            raise self.error(f"{package_name} has no __all__ to document")
        objects = {name: getattr(package, name) for name in names}
        lines = [f".. currentmodule:: {package_name}", ""]
        lines += self._summary_table(package_name, objects)
        for kind, title in (
            ("class", "Classes"),
            ("exception", "Exceptions"),
            ("function", "Functions"),
            ("data", "Constants, registries and types"),
        ):
            chosen = [name for name, obj in objects.items() if _kind(obj) == kind]
            if not chosen:
                continue
            lines += [f".. rubric:: {title}", ""]
            for name in chosen:
                home = _documented_elsewhere(package_name, name, objects[name], objects)
                if home is not None:
                    lines += self._alias_entry(package_name, name, kind, home)
                else:
                    lines += self._entry(package_name, name, objects[name], kind)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=f"<package-api {package_name}>"), container)
        return container.children

    def _summary(self, package_name: str, name: str, obj: Any) -> str:
        if _kind(obj) == "data":
            doc = _data_comment(package_name, name, obj)
        else:
            doc = (inspect.getdoc(obj) or "").splitlines()
        return self._clean_markup(_first_sentence(doc))

    def _clean_markup(self, text: str) -> str:
        """``text`` if it parses without a problem, else the same text with every markup character escaped."""
        document = new_document("<summary>", self.state.document.settings)
        document.reporter = NullReporter()
        RSTStateMachine(state_classes, "Body").run([text], document)
        if not any(document.findall(nodes.system_message)):
            return text
        return "".join("\\" + char if char in "\\*`|_[]<>:" else char for char in text)

    def _summary_table(self, package_name: str, objects: dict[str, Any]) -> list[str]:
        lines = [".. list-table::", "   :widths: 30 70", ""]
        for name, obj in objects.items():
            role = {"class": "class", "exception": "exc", "function": "func", "data": "data"}[_kind(obj)]
            lines += [f"   * - :py:{role}:`{name}`", f"     - {self._summary(package_name, name, obj)}"]
        return [*lines, ""]

    @staticmethod
    def _alias_entry(package_name: str, name: str, kind: str, home: str) -> list[str]:
        role = "exc" if kind == "exception" else "class"
        return [
            f".. py:{kind}:: {name}",
            f"   :module: {package_name}",
            "",
            f"   The same class as :py:{role}:`{home}`, importable from ``{package_name}`` too.",
            "",
        ]

    def _entry(self, package_name: str, name: str, obj: Any, kind: str) -> list[str]:
        full = f"{package_name}.{name}"
        if kind == "class":
            return [f".. autoclass:: {full}", "   :members:", "   :undoc-members:", "   :show-inheritance:", ""]
        if kind == "exception":
            return [f".. autoexception:: {full}", "   :show-inheritance:", ""]
        if kind == "function":
            return [f".. autofunction:: {full}", ""]
        lines = [f".. py:data:: {name}", f"   :module: {package_name}"]
        value = _value_option(obj)
        lines.append(f"   :value: {value}" if value is not None else f"   :type: {_type_name(obj)}")
        lines.append("")
        lines += [f"   {line}" for line in _data_comment(package_name, name, obj)]
        return [*lines, ""]


class RegistryTable(SphinxDirective):
    """``.. registry-table:: fabric_strategies.STRATEGY_REGISTRY``: every registered name and its description.

    The table is built from the registry when the docs are built, so it lists exactly what a user can choose by
    name (with no third-party packages installed).
    """

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name, _, attribute = self.arguments[0].rpartition(".")
        registry = getattr(importlib.import_module(module_name), attribute)
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += [nodes.colspec(colwidth=35), nodes.colspec(colwidth=65)]
        head = nodes.thead()
        head += self._row(nodes.Text("name"), nodes.Text("what it is"))
        body = nodes.tbody()
        for name, description in registry.descriptions().items():
            body += self._row(nodes.literal(text=f'"{name}"'), nodes.Text(description))
        group += [head, body]
        return [table]

    @staticmethod
    def _row(*cells: nodes.Node) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph("", "", cell)
            row += entry
        return row


class DocstringWarningsNotFatal(logging.Filter):
    """Print warnings located in a docstring as messages that do not fail the build; let every other one through."""

    def filter(self, record: logging.LogRecord) -> bool:
        location = getattr(record, "location", None)
        if isinstance(location, nodes.Node):
            location = sphinx_logging.get_node_location(location)
        if getattr(record, "type", None) == "autodoc" or not isinstance(location, str):
            return True  # import failures and structural problems stay fatal
        if "docstring of " not in location:
            return True
        message = record.getMessage()
        sys.stderr.write(f"{location}: docstring warning (not fatal): {message}\n")
        return False


def _install_docstring_filter(app: Sphinx) -> None:
    for handler in logging.getLogger(sphinx_logging.NAMESPACE).handlers:
        if isinstance(handler, sphinx_logging.WarningStreamHandler):
            handler.filters.insert(0, DocstringWarningsNotFatal())


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("package-api", PackageAPI)
    app.add_directive("registry-table", RegistryTable)
    _install_docstring_filter(app)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

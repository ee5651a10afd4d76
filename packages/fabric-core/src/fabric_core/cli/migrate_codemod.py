"""The libcst half of ``fabric migrate``: rewrite one file's Lightning Fabric imports and qualified names.

Two passes over the parsed file. The planner resolves every name with libcst's scope analysis (so aliases,
``import lightning as L`` and attribute chains resolve as Python would) and decides what changes; the rewriter
applies the plan. A name imported from Lightning keeps the name it is bound to in the file (``from fabric_utils import
seed_worker as pl_worker_init_function``), so code that uses it, string annotations included, keeps working. An
attribute chain through a module alias (``lf.strategies.DDPStrategy``) becomes ``fabric_strategies.DDPStrategy``, and
the alias's import goes when nothing else uses it. String literals are never touched, and a file without Lightning
imports comes back byte for byte.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import (
    Access,
    MetadataWrapper,
    PositionProvider,
    QualifiedNameProvider,
    QualifiedNameSource,
    ScopeProvider,
)
from typing_extensions import override

from fabric_core.cli.migrate import LIGHTNING_MODULES, PACKAGES, NameTable, Target, Unmapped, canonical, is_fabric


@dataclass(frozen=True)
class Migrated:
    """One file after the rewrite: its new bytes, the diff from the old ones, and the names that were not mapped."""

    code: bytes
    diff: str
    unmapped: list[Unmapped]


def migrate_source(source: bytes, path: str, table: NameTable) -> Migrated:
    """Rewrite ``source`` (the bytes of the file at ``path``); ``SyntaxError`` when it does not parse."""
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as err:
        raise SyntaxError(f"cannot parse line {err.raw_line}, column {err.raw_column}: {err.message}") from None
    wrapper = MetadataWrapper(module)
    planner = _Planner(path, table)
    wrapper.visit(planner)
    if not planner.imports:
        return Migrated(source, "", planner.unmapped)
    new = wrapper.module.visit(_Rewriter(planner))
    if new.code == module.code:
        return Migrated(source, "", planner.unmapped)
    old_lines = [_ended(line) for line in module.code.splitlines(keepends=True)]
    new_lines = [_ended(line) for line in new.code.splitlines(keepends=True)]
    diff = "".join(difflib.unified_diff(old_lines, new_lines, fromfile=path, tofile=path))
    return Migrated(new.bytes, diff, planner.unmapped)


def _ended(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


@dataclass
class _Alias:
    """One name of a Lightning import: re-imported from ``target``, or a module whose uses are ``accesses``, or kept."""

    target: Target | None = None
    accesses: list[Access] | None = None


@dataclass
class _Plan:
    replacements: dict[int, Target] = field(default_factory=dict)  # id(Attribute) -> the name that replaces it
    consumed: dict[int, str] = field(default_factory=dict)  # id(node inside a replaced chain) -> its package
    imports: dict[int, list[_Alias | None]] = field(default_factory=dict)  # id(import) -> per alias, None: not ours

    def removable(self, alias: _Alias) -> bool:
        assert alias.accesses is not None
        return all(id(access.node) in self.consumed for access in alias.accesses)

    def packages(self, alias: _Alias) -> list[str]:
        assert alias.accesses is not None
        used = {self.consumed[id(access.node)] for access in alias.accesses if id(access.node) in self.consumed}
        return [package for package in PACKAGES if package in used]


class _Planner(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider, QualifiedNameProvider, ScopeProvider)

    def __init__(self, path: str, table: NameTable) -> None:
        super().__init__()
        self.path = path
        self.table = table
        self.plan = _Plan()
        self.imports = self.plan.imports
        self.unmapped: list[Unmapped] = []
        self._reported: set[str] = set()
        self._pending: tuple[cst.Attribute, str] | None = None  # the outermost unmapped chain being visited

    def _lightning_name(self, node: cst.CSTNode) -> str | None:
        names = self.get_metadata(QualifiedNameProvider, node, set())
        for name in sorted(q.name for q in names if q.source is QualifiedNameSource.IMPORT):
            resolved = canonical(name)
            if resolved is not None:
                return resolved
        return None

    def _report(self, node: cst.CSTNode, name: str) -> None:
        if name in self._reported:
            return
        self._reported.add(name)
        line = self.get_metadata(PositionProvider, node).start.line
        fabric = is_fabric(name)
        self.unmapped.append(Unmapped(self.path, line, name, self.table.suggest(name) if fabric else None, fabric))

    def _accesses(self, statement: cst.CSTNode, bound: str) -> list[Access]:
        scope = self.get_metadata(ScopeProvider, statement)
        assert scope is not None
        found: list[Access] = []
        for assignment in scope.assignments:
            if getattr(assignment, "node", None) is statement and (
                assignment.name == bound or bound.startswith(assignment.name + ".")
            ):
                found.extend(assignment.references)
        return found

    @override
    def visit_Import(self, node: cst.Import) -> bool:
        entries: list[_Alias | None] = []
        for alias in node.names:
            dotted = get_full_name_for_node(alias.name) or ""
            if canonical(dotted) is None:
                entries.append(None)
                continue
            entries.append(_Alias(accesses=self._accesses(node, alias.evaluated_alias or dotted)))
        if any(entries):
            self.imports[id(node)] = entries
        return False

    @override
    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        module = get_full_name_for_node(node.module) if node.module is not None else None
        if node.relative or module is None or canonical(module) is None:
            return False
        if isinstance(node.names, cst.ImportStar):
            self._report(node, f"{canonical(module)}.*")
            return False
        entries: list[_Alias | None] = []
        for alias in node.names:
            qualified = canonical(f"{module}.{alias.evaluated_name}")
            assert qualified is not None
            target = self.table.lookup(qualified)
            if target is not None:
                entries.append(_Alias(target=target))
            elif qualified in LIGHTNING_MODULES:
                entries.append(_Alias(accesses=self._accesses(node, alias.evaluated_alias or alias.evaluated_name)))
            else:
                self._report(alias, qualified)
                entries.append(_Alias())
        self.imports[id(node)] = entries
        return False

    @override
    def visit_Attribute(self, node: cst.Attribute) -> bool:
        qualified = self._lightning_name(node)
        if qualified is None:
            return True
        target = self.table.lookup(qualified)
        if target is None:
            if self._pending is None:
                self._pending = (node, qualified)
            return True
        self.plan.replacements[id(node)] = target
        chain: cst.BaseExpression = node
        while isinstance(chain, cst.Attribute):
            self.plan.consumed[id(chain)] = target.package
            chain = chain.value
        self.plan.consumed[id(chain)] = target.package
        return False

    @override
    def leave_Attribute(self, original_node: cst.Attribute) -> None:
        if self._pending is not None and self._pending[0] is original_node:
            self._pending = None

    @override
    def visit_Name(self, node: cst.Name) -> None:
        qualified = self._lightning_name(node)
        if qualified is None:
            return
        if self._pending is not None:  # the head of an attribute chain that maps to nothing
            self._report(self._pending[0], self._pending[1])
            self._pending = None
        elif self.table.lookup(qualified) is None:
            self._report(node, qualified)


class _Rewriter(cst.CSTTransformer):
    def __init__(self, planner: _Planner) -> None:
        super().__init__()
        self.plan = planner.plan
        self._imported: list[set[str]] = []  # per block: the packages whose ``import`` was added there

    @override
    def visit_Module(self, node: cst.Module) -> None:
        self._imported.append(set())

    @override
    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._imported.append(set())

    @override
    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        self._imported.pop()
        return updated_node

    @override
    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        target = self.plan.replacements.get(id(original_node))
        if target is None:
            return updated_node
        return cst.Attribute(
            value=cst.Name(target.package), attr=cst.Name(target.name), lpar=updated_node.lpar, rpar=updated_node.rpar
        )

    @override
    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.SimpleStatementLine | cst.FlattenSentinel[cst.SimpleStatementLine] | cst.RemovalSentinel:
        body = self._body(original_node.body, updated_node.body)
        if body is None:
            return updated_node
        if not body:
            return cst.RemoveFromParent()
        if len(original_node.body) == 1 and len(body) > 1:
            lines = [cst.SimpleStatementLine(body=[statement]) for statement in body]
            lines[0] = lines[0].with_changes(leading_lines=updated_node.leading_lines)
            lines[-1] = lines[-1].with_changes(trailing_whitespace=updated_node.trailing_whitespace)
            return cst.FlattenSentinel(lines)
        return updated_node.with_changes(body=body)

    @override
    def visit_SimpleStatementSuite(self, node: cst.SimpleStatementSuite) -> None:
        self._imported.append(set())  # ``if x: import ...`` runs only sometimes: its imports stay with it

    @override
    def leave_SimpleStatementSuite(
        self, original_node: cst.SimpleStatementSuite, updated_node: cst.SimpleStatementSuite
    ) -> cst.SimpleStatementSuite:
        body = self._body(original_node.body, updated_node.body)
        self._imported.pop()
        return updated_node if body is None else updated_node.with_changes(body=body or [cst.Pass()])

    def _body(
        self, original: Sequence[cst.BaseSmallStatement], updated: Sequence[cst.BaseSmallStatement]
    ) -> list[cst.BaseSmallStatement] | None:
        body: list[cst.BaseSmallStatement] = []
        changed = False
        for before, after in zip(original, updated, strict=True):
            entries = self.plan.imports.get(id(before))
            new = None if entries is None else self._rewrite(after, entries)
            changed |= new is not None
            body.extend([after] if new is None else new)
        if not changed:
            return None
        if len(body) == 1:
            return body
        return [statement.with_changes(semicolon=cst.MaybeSentinel.DEFAULT) for statement in body]

    def _added_imports(self, alias: _Alias) -> list[cst.Import]:
        added = []
        for package in self.plan.packages(alias):
            if package not in self._imported[-1]:
                self._imported[-1].add(package)
                added.append(cst.Import(names=[cst.ImportAlias(name=cst.Name(package))]))
        return added

    def _rewrite(
        self, node: cst.BaseSmallStatement, entries: list[_Alias | None]
    ) -> list[cst.BaseSmallStatement] | None:
        assert isinstance(node, cst.Import | cst.ImportFrom)
        assert not isinstance(node.names, cst.ImportStar)
        kept: list[cst.ImportAlias] = []
        groups: dict[str, list[cst.ImportAlias]] = {}
        added: list[cst.Import] = []
        for alias, entry in zip(node.names, entries, strict=True):
            if entry is None or (entry.target is None and entry.accesses is None):
                kept.append(alias)
            elif entry.target is not None:
                groups.setdefault(entry.target.package, []).append(_renamed(alias, entry.target))
            else:
                added.extend(self._added_imports(entry))
                if not self.plan.removable(entry):
                    kept.append(alias)
        if not groups and not added and len(kept) == len(node.names):
            return None
        if isinstance(node, cst.ImportFrom) and len(groups) == 1 and not kept and not added:
            # every name goes to one package: keep the statement's layout (parentheses, comments, line breaks)
            ((package, names),) = groups.items()
            return [node.with_changes(module=cst.Name(package), relative=(), names=names)]
        statements: list[cst.BaseSmallStatement] = [
            cst.ImportFrom(module=cst.Name(package), names=_commas(names)) for package, names in groups.items()
        ]
        statements.extend(added)
        if kept:
            statements.append(node.with_changes(names=_commas(kept)))
        return statements


def _renamed(alias: cst.ImportAlias, target: Target) -> cst.ImportAlias:
    if alias.evaluated_name == target.name:
        return alias
    bound = alias.asname or cst.AsName(name=cst.Name(alias.evaluated_name))
    return alias.with_changes(name=cst.Name(target.name), asname=bound)


def _commas(aliases: list[cst.ImportAlias]) -> list[cst.ImportAlias]:
    return [alias.with_changes(comma=cst.MaybeSentinel.DEFAULT) for alias in aliases]

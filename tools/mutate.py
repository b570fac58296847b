"""Mutation testing of the modules that guard data and access (issue 19): ``make mutate``.

A small AST mutator, not mutmut or cosmic-ray: the allow and deny lists these modules
guard with are module-level ``frozenset``/``set``/tuple literals, which mutmut 3 does not
mutate (it mutates inside functions only), and neither tool drops one entry of a list.
Here every mutant is one change to one module, made on its syntax tree:

- ``compare``: ``<`` -> ``<=``/``>=``, ``<=`` -> ``<``/``>``, ``>`` -> ``>=``/``<=``,
  ``>=`` -> ``>``/``<``, ``==`` <-> ``!=``, ``is`` <-> ``is not``, ``in`` <-> ``not in``
- ``boolop``: ``and`` <-> ``or``; ``not``: ``not x`` -> ``x``
- ``delete``: a statement inside a function (call, assignment, augmented assignment,
  ``return``, ``raise``, ``continue``, ``break``) -> ``pass``
- ``return``: ``return x`` -> ``return None``
- ``constant``: an int ``n`` -> ``n + 1``, a float ``f`` -> ``f + 1``, ``True`` <-> ``False``,
  a string compared with or assigned to a module-level name -> ``"XX" + s + "XX"``
- ``drop``: one entry removed from a set literal, from a tuple/list that is tested with
  ``in``, caught by ``except``, passed to ``frozenset``/``set``/``tuple``/``list``, or bound
  to a module-level name, and one key removed from a module-level dict

Docstrings, imports, annotations, decorators, ``assert`` and f-strings are left alone.

For each mutant the mutated module (``ast.unparse``) is written into a private copy of the
repository (one per worker: ``src``, ``tests``, ``docs``, ``pyproject.toml``) and the
module's fast tests run there (``pytest -x``, a fixed Hypothesis seed where they use it)
with a timeout of three times their unmutated time (at least ten seconds more). A failing
test kills the mutant; a timeout counts as killed and is reported separately. Known-harmless
survivors (equivalent mutants) are listed in ``HARMLESS`` below or marked on their line with
``# mutate: harmless (reason)``; they are left out of the score.

Usage: ``python -m tools.mutate [--module engine/lease.py ...] [-j N] [--list]``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "src/shoal"

# Module (under PACKAGE) -> its fast tests, as globs under the repository root. A glob that
# matches nothing yet is fine: files that are added later are picked up by it.
MODULES: dict[str, tuple[str, ...]] = {
    "engine/lease.py": ("tests/engine/test_lease*.py",),
    "engine/policy.py": ("tests/engine/test_policy*.py",),
    "log/wal.py": ("tests/log/test_wal*.py", "tests/log/test_headroom.py"),
    "log/segment.py": ("tests/log/test_segment*.py", "tests/log/test_shipper.py"),
    "names.py": ("tests/unit/test_names*.py", "tests/engine/test_restore_names.py"),
    "tokens.py": ("tests/unit/test_tokens*.py",),
    "values.py": ("tests/unit/test_values*.py",),
    "wire.py": ("tests/unit/test_values*.py",),  # values.py's encoding half, moved out
    # Later additions on the guarding path: fencing and isolation limits.
    "log/timeline.py": ("tests/log/test_fencing*.py", "tests/log/test_branch.py",
                        "tests/log/test_restore.py"),
    "engine/quota.py": ("tests/engine/test_db_quotas*.py",),
    "server/quota.py": ("tests/unit/test_quota*.py",),
    "engine/memory.py": ("tests/engine/test_memory*.py",),
    "storage/fenced.py": ("tests/storage/test_fenced*.py",),
    "storage/file.py": ("tests/storage/test_object_store.py", "tests/storage/test_file*.py",
                        "tests/storage/test_probe.py"),
    "server/gate.py": ("tests/unit/test_gate*.py",),
    "engine/disk.py": ("tests/engine/test_disk*.py",),
    "engine/tables.py": ("tests/engine/test_tables.py", "tests/engine/test_policy*.py"),
    # Several nodes: who is a member, who leads (the store's fence is timeline.py's).
    "cluster/membership.py": ("tests/cluster/test_membership.py",),
    "cluster/placement.py": ("tests/cluster/test_placement.py",),
    "log/feed.py": ("tests/log/test_feed.py",),
    "engine/replica.py": ("tests/engine/test_replica.py", "tests/engine/test_replica_copy.py"),
    # The change feed: its pinned format, the spool a crash reads, the reading.
    "feed/format.py": ("tests/feed/test_capture.py",),
    "feed/spool.py": ("tests/feed/test_spool.py",),
    "feed/reader.py": ("tests/feed/test_reader.py",),
    # Webhooks: their records in the store (the delivery's CAS, dead letters).
    "engine/webhooks.py": ("tests/engine/test_webhook_records.py",),
    # Row rules: the only SQL a token bound by rules reaches rows with.
    "rules/expr.py": ("tests/unit/test_rules.py",),
    "rules/query.py": ("tests/unit/test_rules.py",),
    # Embedded replicas: the numbering clients hold their place by.
    "engine/sync.py": ("tests/server/test_sync.py", "tests/unit/test_sync_cache.py"),
    "log/generations.py": ("tests/unit/test_generations.py", "tests/server/test_sync.py",
                           "tests/log/test_branch.py"),
}
# The modules `make mutate` runs when no MODULE is named (issue 19's seven; values.py
# is two modules since its encoding moved to wire.py for the client).
DEFAULT = ("engine/lease.py", "engine/policy.py", "log/wal.py", "log/segment.py",
           "names.py", "tokens.py", "values.py", "wire.py")
# Test files shared between modules: each one counts for a module only if it imports it.
SHARED = ("tests/unit/test_formats*.py", "tests/log/test_formats*.py",
          "tests/log/test_*_malformed.py",
          "tests/unit/test_*_malformed.py")


@dataclass(frozen=True)
class Harmless:
    """A surviving mutant that cannot change behaviour, with the reason."""

    module: str  # "*" for every module
    kind: str  # "*" for every kind
    text: str  # a regular expression searched in the mutated line's source
    reason: str
    mutation: str = ""  # a regular expression searched in the mutant's description


# Entries match one line's text, so they survive edits elsewhere in the module; where the
# text is not unique, mark the line instead: `# mutate: harmless [kind] (reason)`, at its end
# or on a comment line of its own just above it.
HARMLESS: tuple[Harmless, ...] = (
    Harmless("*", "delete", r"^\s*(log|logger)\.(debug|info|warning|error|exception)\(",
             "log message"),
    Harmless("*", "constant", r"^\w+ = TypeVar\(", "a type variable's name: for type checkers"),
    Harmless("*", "delete", r"^\s*raise AssertionError\(.unreachable.\)$",
             "after a loop that returns or raises: for type checkers"),
    Harmless("log/timeline.py", "constant", r"^\s*reach = -1\b",
             "txids start at 1: a segment never ends at -1 or -2"),
    Harmless("log/timeline.py", "constant", r"^def check_chain\(",
             "txids start at 1: lo = -1 and lo = -2 select the same segments",
             mutation=r"`1` -> `2`"),
    Harmless("log/timeline.py", "compare", r"^\s*if (seg\.last|snap\.txid) > txid:",
             "a never-fenced timeline's objects ending at one txid hold one commit time",
             mutation=r"`>` -> `>=`"),
    Harmless("log/timeline.py", "compare", r"if len\(blob\.data\) < len\(mine\) and",
             "the whole write landed: writing it again changes nothing",
             mutation=r"`<` -> `<=`"),
    Harmless("engine/lease.py", "delete", r"^\s*return None$",
             "the last statement of decode: falling off the end returns None too"),
    Harmless("engine/lease.py", "return", r"^\s*return False$",
             "_write's callers only test its truth: None is as false as False"),
    Harmless("engine/lease.py", "delete", r"^\s*(record: Record|error: Exception) \| None = None$",
             "every path through acquire assigns it before reading it"),
    Harmless("log/wal.py", "constant", r"page_size > 65536 or page_size & \(page_size - 1\)",
             "65537 is odd, so the power-of-two test refuses it as well",
             mutation=r"`65536` -> `65537`"),
    Harmless("log/wal.py", "constant", r"page_size > 65536 or page_size & \(page_size - 1\)",
             "p & (p - 2) is 0 for p >= 512 exactly when p is a power of two, as p & (p - 1)",
             mutation=r"`1` -> `2`"),
    Harmless("storage/file.py", "constant", r'base = prefix\.rsplit\("/", 1\)\[0\] if "/" in',
             "a listing walks a wider folder; the prefix filter keeps the same keys",
             mutation=r"`1` -> `2`|`'/'` -> "),
    Harmless("storage/file.py", "delete", r"^\s*return None$",
             "_current_etag's last line: falling off the end returns None too"),
    Harmless("log/segment.py", "constant", r"^LEVEL = 1\b",
             "zstd's level: every level decodes to the same bytes"),
    Harmless("tokens.py", "constant", r"^ACCESS_LEVELS = ",
             "only the order of the levels is compared: admin stays the highest",
             mutation=r"`3` -> `4`"),
    Harmless("engine/quota.py", "compare", r"if w is not None and w\.start > start:",
             "w.start == start took the branch above: > and >= agree",
             mutation=r"`>` -> `>=`"),
    Harmless("engine/quota.py", "boolop", r"if limits\.rows_read or \(writes and ",
             "a fast path: the checks under it refuse nothing without writes",
             mutation=r"`and` -> `or`"),
    # encode_row's fast path: whatever it lets through to encode() comes back unchanged.
    Harmless("wire.py", "delete", r"^\s*continue$",
             "encode_row's fast path: encode() returns the value unchanged"),
    Harmless("wire.py", "boolop", r"^\s*if t is str or v is None:",
             "encode_row's fast path: encode() returns the value unchanged"),
    Harmless("wire.py", "compare", r"^\s*if t is int and -SAFE_INT <= v <= SAFE_INT:",
             "encode_row's fast path: an int at the bound is returned as is by encode()",
             mutation=r"`<=` -> `<`"),
    Harmless("wire.py", "compare", r'"Infinity" if value > 0 else',
             "only an infinity reaches it: > 0 and >= 0 agree on both",
             mutation=r"`>` -> `>=`"),
    Harmless("wire.py", "constant", r'"Infinity" if value > 0 else',
             "only an infinity reaches it: > 0 and > 1 agree on both"),
)
# `# mutate: harmless [kind [word]] (reason)`: the word, if given, must be one of the
# mutation's own terms (`drop NotADirectoryError`: only that entry's drop; `compare >=`).
MARKER = re.compile(r"#\s*mutate:\s*harmless\b(?:\s+(\w+))?(?:\s+([^\s(]+))?\s*\(([^)]*)\)")

_FLIPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE), ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,), ast.NotIn: (ast.In,),
}
_OP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
            ast.NotIn: "not in"}
_COLLECTION_CALLS = frozenset({"frozenset", "set", "tuple", "list"})
_SKIP_NAMES = frozenset({"__slots__", "__all__", "__match_args__"})
_DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise,
              ast.Continue, ast.Break)


@dataclass
class Site:
    """One mutation of one module: where, what, and how to apply it to its own tree."""

    line: int
    end_line: int
    kind: str
    description: str
    apply: Callable[[], None] = field(repr=False)


def _short(node: ast.AST, limit: int = 50) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _is_ellipsis(stmt: ast.AST) -> bool:
    """A body of ``...`` (a Protocol's method): deleting it changes nothing."""
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and stmt.value.value is Ellipsis)


class _Finder:
    """Walks one module's tree in a fixed order and records every mutation site."""

    def __init__(self) -> None:
        self.sites: list[Site] = []

    def add(self, node: ast.AST, kind: str, description: str, apply: Callable[[], None]) -> None:
        line = getattr(node, "lineno", 0)
        self.sites.append(Site(line, getattr(node, "end_lineno", line) or line, kind,
                               description, apply))

    # -- statements -------------------------------------------------------------------------
    def body(self, stmts: list[ast.stmt], *, module: bool = False) -> None:
        for i, stmt in enumerate(stmts):
            if i == 0 and _is_docstring(stmt):
                continue
            self.stmt(stmts, i, module=module)

    def stmt(self, stmts: list[ast.stmt], i: int, *, module: bool) -> None:
        node = stmts[i]
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Assert | ast.Global
                      | ast.Nonlocal | ast.Pass):
            return
        if isinstance(node, ast.Assign | ast.AnnAssign) and any(
                isinstance(t, ast.Name) and t.id in _SKIP_NAMES
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            return
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return
        if not module and isinstance(node, _DELETABLE) and not _is_docstring(node) \
                and not _is_ellipsis(node):
            def delete(stmts: list[ast.stmt] = stmts, i: int = i) -> None:
                stmts[i] = ast.copy_location(ast.Pass(), stmts[i])
            self.add(node, "delete", f"delete `{_short(node)}`", delete)
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            def none(node: ast.Return = node) -> None:
                node.value = ast.Constant(None)
            self.add(node, "return", f"`{_short(node)}` -> `return None`", none)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self.expr_list(node.args.defaults)
            self.expr_list([d for d in node.args.kw_defaults if d is not None])
            self.body(node.body)
            return
        if isinstance(node, ast.ClassDef):
            self.class_body(node.body)
            return
        module_value = module and isinstance(node, ast.Assign | ast.AnnAssign)
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "type_comment", "decorator_list", "target"):
                continue
            if name == "targets":
                continue
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self.body(value, module=module)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.excepthandler):
                        self.handler(item)
                    elif isinstance(item, ast.AST):
                        self.expr(item)
            elif isinstance(value, ast.AST):
                self.expr(value, collection=module_value, string=module_value,
                          top=module_value)

    def class_body(self, stmts: list[ast.stmt]) -> None:
        # A class body runs at import: its assignments are treated like a module's.
        for i, stmt in enumerate(stmts):
            if i == 0 and _is_docstring(stmt):
                continue
            self.stmt(stmts, i, module=True)

    def handler(self, handler: ast.excepthandler) -> None:
        assert isinstance(handler, ast.ExceptHandler)
        if handler.type is not None:
            self.expr(handler.type, collection=True)
        self.body(handler.body)

    # -- expressions ------------------------------------------------------------------------
    def expr_list(self, nodes: Iterable[ast.expr]) -> None:
        for node in nodes:
            self.expr(node)

    def expr(self, node: ast.AST, *, collection: bool = False, string: bool = False,
             top: bool = False) -> None:
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Constant):
            self.constant(node, string=string)
            return
        if isinstance(node, ast.Compare):
            self.compare(node)
            return
        if isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            old_text, new_text = ("and", "or") if new is ast.Or else ("or", "and")

            def swap(node: ast.BoolOp = node, new: type[ast.boolop] = new) -> None:
                node.op = new()
            self.add(node, "boolop", f"`{old_text}` -> `{new_text}` in `{_short(node)}`", swap)
            self.expr_list(node.values)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            def unnot(node: ast.UnaryOp = node) -> None:
                # `not x` -> `not not x`: the truth of `x`, without reaching into the parent.
                node.operand = ast.UnaryOp(ast.Not(), node.operand)
            self.add(node, "not", f"`{_short(node)}` -> `{_short(node.operand)}`", unnot)
            self.expr(node.operand)
            return
        if isinstance(node, ast.Set):
            self.drops(node, "set")
            self.expr_list(node.elts)
            return
        if isinstance(node, ast.Tuple | ast.List):
            if collection and len(node.elts) >= 2:
                self.drops(node, "tuple" if isinstance(node, ast.Tuple) else "list")
            for elt in node.elts:
                self.expr(elt, string=top and not collection)
            return
        if isinstance(node, ast.Dict) and top:
            self.dict_drops(node)
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else ""
            self.expr(node.func)
            for arg in node.args:
                self.expr(arg, collection=name in _COLLECTION_CALLS, string=top)
            for kw in node.keywords:
                self.expr(kw.value)
            return
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.expr(item, string=top and isinstance(node, ast.Dict))
            elif isinstance(value, ast.AST):
                self.expr(value)

    def constant(self, node: ast.Constant, *, string: bool) -> None:
        value = node.value
        new: object
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = value + 1
        elif isinstance(value, float):
            new = value + 1.0
        elif isinstance(value, str) and string:
            new = f"XX{value}XX"
        else:
            return

        def change(node: ast.Constant = node, new: object = new) -> None:
            node.value = new  # type: ignore[assignment]
        self.add(node, "constant", f"`{value!r}` -> `{new!r}`", change)

    def compare(self, node: ast.Compare) -> None:
        for j, op in enumerate(node.ops):
            for new in _FLIPS.get(type(op), ()):
                def flip(node: ast.Compare = node, j: int = j,
                         new: type[ast.cmpop] = new) -> None:
                    node.ops[j] = new()
                self.add(node, "compare",
                         f"`{_OP_TEXT[type(op)]}` -> `{_OP_TEXT[new]}` in `{_short(node)}`",
                         flip)
        operands = [node.left, *node.comparators]
        for j, operand in enumerate(operands):
            membership = j > 0 and isinstance(node.ops[j - 1], ast.In | ast.NotIn)
            self.expr(operand, collection=membership, string=True)

    def drops(self, node: ast.Set | ast.Tuple | ast.List, what: str) -> None:
        for k, elt in enumerate(node.elts):
            def drop(node: ast.Set | ast.Tuple | ast.List = node, k: int = k) -> None:
                del node.elts[k]
            self.add(elt, "drop", f"drop `{_short(elt)}` from {what} `{_short(node)}`", drop)

    def dict_drops(self, node: ast.Dict) -> None:
        for k, key in enumerate(node.keys):
            if key is None:
                continue

            def drop(node: ast.Dict = node, k: int = k) -> None:
                del node.keys[k]
                del node.values[k]
            self.add(key, "drop", f"drop key `{_short(key)}` from dict `{_short(node)}`", drop)


def sites(tree: ast.Module) -> list[Site]:
    """Every mutation site of a module's tree, in a fixed order (`apply` acts on `tree`)."""
    finder = _Finder()
    finder.body(tree.body, module=True)
    return finder.sites


def mutate(source: str, index: int) -> str:
    """The source of the module with mutation ``index`` applied."""
    tree = ast.parse(source)
    sites(tree)[index].apply()
    return ast.unparse(ast.fix_missing_locations(tree))


# -- running ---------------------------------------------------------------------------------
@dataclass
class Mutant:
    module: str
    index: int
    line: int
    kind: str
    description: str
    harmless: str | None = None  # the reason, if it is a known-harmless mutant
    status: str = "pending"  # killed, timeout, survived, invalid
    seconds: float = 0.0

    def where(self) -> str:
        return f"{self.module}:{self.line}"


def harmless_reason(module: str, site: Site, lines: Sequence[str]) -> str | None:
    """Why the mutant at this site cannot matter, if it is a known-harmless one."""
    span = lines[site.line - 1: max(site.line, site.end_line)]
    above = site.line - 2  # a comment line of its own just above the statement counts too
    if above >= 0 and lines[above].lstrip().startswith("#"):
        span = [lines[above], *span]
    for text in span:
        found = MARKER.search(text)
        change = re.split(r" (?:in|from) `", site.description)[0]  # not the context after it
        if found and found.group(1) in (None, site.kind) and \
                (found.group(2) is None or f"`{found.group(2)}`" in change):
            return found.group(3).strip() or "marked harmless"
    first = lines[site.line - 1] if 0 < site.line <= len(lines) else ""
    for rule in HARMLESS:
        if (rule.module in ("*", module) and rule.kind in ("*", site.kind)
                and re.search(rule.text, first) and re.search(rule.mutation, site.description)):
            return rule.reason
    return None


def list_mutants(root: Path, package: str, module: str) -> list[Mutant]:
    source = (root / package / module).read_text()
    lines = source.splitlines()
    return [Mutant(module, i, s.line, s.kind, s.description, harmless_reason(module, s, lines))
            for i, s in enumerate(sites(ast.parse(source)))]


def _imports(path: Path, dotted: str) -> bool:
    """Whether a test file imports the module ``dotted`` (or it from its package)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return False
    parent, _, leaf = dotted.rpartition(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == dotted for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (
                node.module == dotted
                or (node.module == parent and any(a.name == leaf for a in node.names))):
            return True
    return False


def tests_for(root: Path, package: str, module: str,
              table: dict[str, tuple[str, ...]], shared: Sequence[str] = SHARED) -> list[str]:
    """The module's test files (relative to root): its globs, plus shared files importing it."""
    found: set[str] = set()
    for pattern in table[module]:
        found.update(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    dotted = ".".join(Path(package).parts[1:] + Path(module).with_suffix("").parts)
    for pattern in shared:
        found.update(str(p.relative_to(root)) for p in root.glob(pattern)
                     if p.is_file() and _imports(p, dotted))
    return sorted(found)


class Workspace:
    """Private copies of the repository, one per worker, each holding at most one mutant."""

    COPY = ("src", "tests", "docs", "pyproject.toml", "conftest.py")

    def __init__(self, root: Path, count: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="shoal-mutate-"))
        self.free: list[Path] = []
        self.lock = threading.Condition()
        ignore = shutil.ignore_patterns("__pycache__", "node_modules", ".hypothesis",
                                        ".pytest_cache", "*.egg-info")
        for n in range(count):
            slot = self.tmp / f"w{n}"
            slot.mkdir()
            for name in self.COPY:
                src = root / name
                if src.is_dir():
                    shutil.copytree(src, slot / name, ignore=ignore)
                elif src.is_file():
                    shutil.copy2(src, slot / name)
            self.free.append(slot)

    def take(self) -> Path:
        with self.lock:
            while not self.free:
                self.lock.wait()
            return self.free.pop()

    def give(self, slot: Path) -> None:
        with self.lock:
            self.free.append(slot)
            self.lock.notify()

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _drop_bytecode(path: Path) -> None:
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


def run_tests(slot: Path, tests: Sequence[str], timeout: float | None) -> tuple[str, float]:
    """("passed" | "failed" | "timeout", seconds) for one pytest run in a workspace copy."""
    env = dict(os.environ, PYTHONPATH=str(slot / "src"), PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-p", "no:xdist", "-p", "no:randomly"]
    # Hypothesis' plugin costs a second per run: loaded (with a fixed seed) only if needed.
    if any("hypothesis" in (slot / t).read_text() for t in tests):
        cmd.append("--hypothesis-seed=0")
    else:
        cmd += ["-p", "no:hypothesispytest"]
    cmd += tests
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=slot, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout", time.monotonic() - started
    return ("passed" if code == 0 else "failed"), time.monotonic() - started


@dataclass
class Result:
    module: str
    tests: list[str]
    baseline: float
    mutants: list[Mutant]
    error: str | None = None

    def count(self, *status: str) -> int:
        return sum(1 for m in self.mutants if m.status in status and m.harmless is None)

    @property
    def harmless(self) -> int:
        return sum(1 for m in self.mutants if m.harmless is not None)

    @property
    def score(self) -> float | None:
        scored = self.count("killed", "timeout", "survived")
        return None if scored == 0 else 100.0 * self.count("killed", "timeout") / scored


def run(modules: Sequence[str], *, root: Path = ROOT, package: str = PACKAGE,
        table: dict[str, tuple[str, ...]] | None = None, jobs: int = 1,
        factor: float = 3.0, report: Callable[[Mutant], None] | None = None,
        shared: Sequence[str] = SHARED,
        only: Callable[[Mutant], bool] | None = None) -> list[Result]:
    """Mutate each module and run its tests against every mutant (or those ``only`` picks;
    the others stay "pending" and out of the score)."""
    table = MODULES if table is None else table
    workspace = Workspace(root, max(1, jobs))
    results: list[Result] = []
    try:
        for module in modules:
            tests = tests_for(root, package, module, table, shared)
            mutants = [m for m in list_mutants(root, package, module)
                       if only is None or only(m)]
            result = Result(module, tests, 0.0, mutants)
            results.append(result)
            if not tests:
                result.error = "no tests found"
                continue
            slot = workspace.take()
            try:
                status, seconds = run_tests(slot, tests, None)
            finally:
                workspace.give(slot)
            result.baseline = seconds
            if status != "passed":
                result.error = "the tests fail without any mutant"
                continue
            source = (root / package / module).read_text()
            tree = ast.parse(source)
            if ast.dump(ast.parse(ast.unparse(tree))) != ast.dump(tree):
                result.error = "ast.unparse does not round-trip this module"
                continue
            timeout = max(factor * seconds, seconds + 10.0)

            def one(mutant: Mutant, source: str = source, module: str = module,
                    tests: list[str] = tests, timeout: float = timeout) -> None:
                try:
                    mutated = mutate(source, mutant.index)
                    compile(mutated, module, "exec")
                except (SyntaxError, ValueError):
                    mutant.status = "invalid"
                    return
                slot = workspace.take()
                target = slot / package / module
                try:
                    target.write_text(mutated)
                    _drop_bytecode(target)
                    status, mutant.seconds = run_tests(slot, tests, timeout)
                    mutant.status = {"failed": "killed", "passed": "survived"}.get(status,
                                                                                   status)
                finally:
                    target.write_text(source)
                    _drop_bytecode(target)
                    workspace.give(slot)
                if report is not None:
                    report(mutant)

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                list(pool.map(one, mutants))
    finally:
        workspace.close()
    return results


# -- reporting -------------------------------------------------------------------------------
def summary(results: Sequence[Result]) -> str:
    rows = ["| module | mutants | killed | timeouts | survived | harmless | score |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.error:
            rows.append(f"| {r.module} | {len(r.mutants)} | - | - | - | - | {r.error} |")
            continue
        score = "-" if r.score is None else f"{r.score:.0f}%"
        rows.append(f"| {r.module} | {len(r.mutants)} | {r.count('killed')} | "
                    f"{r.count('timeout')} | {r.count('survived')} | {r.harmless} | {score} |")
    return "\n".join(rows)


def survivors_text(result: Result, root: Path = ROOT, package: str = PACKAGE) -> str:
    lines = (root / package / result.module).read_text().splitlines()
    out = [f"# {result.module}: surviving mutants ({result.count('survived')}), tests: "
           f"{' '.join(result.tests)}"]
    for m in result.mutants:
        if m.status == "survived" and m.harmless is None:
            out.append(f"{m.where()}: {m.kind}: {m.description}")
            out.append(f"    {lines[m.line - 1].strip()}")
    harmless = [m for m in result.mutants if m.harmless is not None]
    if harmless:
        out.append(f"# known harmless ({len(harmless)}), not scored")
        out.extend(f"{m.where()}: {m.kind}: {m.description} [{m.status}] -- {m.harmless}"
                   for m in harmless)
    return "\n".join(out) + "\n"


LINE = re.compile(r"^(killed|survived|timeout|invalid)\s+(\S+?):(\d+): (\w+): (.*?)"
                  r"(?: \(harmless: [^)]*\))?$")


def rescore(log: Path, root: Path = ROOT, package: str = PACKAGE,
            table: dict[str, tuple[str, ...]] | None = None) -> list[Result]:
    """Results read back from a run's lines (``mutants/results.txt`` or its output), with
    the harmless list as it is now: mark a survivor harmless without running again."""
    table = MODULES if table is None else table
    recorded: dict[str, dict[tuple[int, str, str], deque[str]]] = {}
    for text in log.read_text().splitlines():
        found = LINE.match(text)
        if found:
            status, module, line, kind, description = found.groups()
            key = (int(line), kind, description)
            recorded.setdefault(module, {}).setdefault(key, deque()).append(status)
    results = []
    for module, statuses in recorded.items():
        mutants = list_mutants(root, package, module)
        for m in mutants:
            queue = statuses.get((m.line, m.kind, m.description))
            if queue:
                m.status = queue.popleft()
        results.append(Result(module, tests_for(root, package, module, table), 0.0, mutants))
    order = list(table)
    return sorted(results, key=lambda r: order.index(r.module) if r.module in order else 99)


def write_reports(results: Sequence[Result], out: Path, header: str) -> str:
    """Survivors per module (``out/<module>.txt``) and ``out/summary.md``; the table."""
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = r.module.replace("/", "_").removesuffix(".py") + ".txt"
        (out / name).write_text(survivors_text(r))
    table = summary(results)
    (out / "summary.md").write_text(f"{header}\n\n{table}\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="a module under src/shoal (repeatable); default: issue 19's seven")
    parser.add_argument("--all", action="store_true", help="every module in the table")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--factor", type=float, default=3.0,
                        help="timeout as a multiple of the unmutated tests' time")
    parser.add_argument("--out", type=Path, default=ROOT / "mutants",
                        help="where survivors and the summary go (default: mutants/)")
    parser.add_argument("--rescore", type=Path, metavar="RESULTS",
                        help="run nothing: re-read a run's results.txt (or its output) and "
                             "rewrite the summary with the harmless list as it is now")
    args = parser.parse_args(argv)
    modules = args.module or (sorted(MODULES) if args.all else list(DEFAULT))

    if args.list:
        for module in modules:
            tests = tests_for(ROOT, PACKAGE, module, MODULES)
            mutants = list_mutants(ROOT, PACKAGE, module)
            print(f"# {module}: {len(mutants)} mutants; tests: {' '.join(tests) or 'NONE'}")
            for m in mutants:
                note = f"  [harmless: {m.harmless}]" if m.harmless else ""
                print(f"{m.where()}: {m.kind}: {m.description}{note}")
        return 0

    if args.rescore:
        results = rescore(args.rescore)
        print(write_reports(results, args.out, f"Rescored from {args.rescore}"))
        return 0

    started = time.monotonic()
    lock = threading.Lock()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.txt").open("w") as lines:
        def report(m: Mutant) -> None:
            note = f" (harmless: {m.harmless})" if m.harmless else ""
            text = f"{m.status:8} {m.where()}: {m.kind}: {m.description}{note}"
            with lock:
                print(text, flush=True)
                print(text, file=lines, flush=True)

        results = run(modules, jobs=args.jobs, factor=args.factor, report=report)
    elapsed = time.monotonic() - started
    stamp = time.strftime("%Y-%m-%d %H:%M")
    table = write_reports(results, args.out,
                          f"Mutation run {stamp}, -j {args.jobs}, {elapsed / 60:.1f} min")
    print()
    print(table)
    print(f"\n{sum(len(r.mutants) for r in results)} mutants in {elapsed / 60:.1f} min "
          f"(-j {args.jobs}); survivors in {args.out}/")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every SQL statement the store sends is built from constants: values travel only as parameters.

A static audit of ``store_service/`` (the only code that talks to Postgres). For each call of
``execute``/``executemany``/``copy``/``stream``, and each ``psycopg.sql.SQL(...)``, the statement
must be a *constant*: a literal, a module constant, or an f-string, ``+``, ``%``, ``.format``,
``.replace`` or ``.join`` of constants; a local variable counts when every assignment, ``+=`` and
``.append`` to it is constant (the claim and list queries grow their WHERE clauses that way), a
helper's parameter when every caller passes a constant, ``int(...)`` always (a number cannot
inject), and ``sql.Identifier``/``sql.Literal`` always (psycopg quotes them). Anything else, such
as a request value interpolated into the text, fails the test naming the file and line.
The checker is tested on snippets that interpolate a variable in each of those ways.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "store_service"
SINKS = frozenset({"execute", "executemany", "copy", "stream"})
STRING_METHODS = frozenset({"format", "replace", "join", "encode", "strip", "lower", "upper"})
# psycopg.sql objects that are safe whatever their argument (quoted by psycopg).
QUOTED = frozenset({"psycopg.sql.Identifier", "psycopg.sql.Literal", "psycopg.sql.Placeholder"})
COMPOSE = "psycopg.sql.SQL"

# Statements that are not constants, and why they are safe: (file, statement source).
ALLOWED = {
    ("adapters/postgres/migrate/__init__.py", "mig.sql.encode()"):
        "a migration or function file shipped in the package (several statements: no parameters)",
}  # fmt: skip


@dataclass
class Site:
    """One statement sent to the database, and whether it is a constant."""

    file: str
    line: int
    source: str
    const: bool


@dataclass
class Module:
    name: str
    file: str
    tree: ast.Module
    aliases: dict[str, str] = field(default_factory=dict)  # local name -> dotted target
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)


class Audit:
    """The constness analysis over a set of modules (``{dotted name: source}``)."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.modules: dict[str, Module] = {}
        for name, (file, text) in sources.items():
            mod = Module(name, file, ast.parse(text))
            self.modules[name] = mod
        for mod in self.modules.values():
            self._index(mod)
        self._consts: dict[str, set[str]] = {}
        self._pending: set[str] = set()
        # (module, function, parameter) whose arguments must be constant: helpers that pass a
        # parameter on to a sink.
        self.obligations: set[tuple[str, str, str]] = set()
        self.sites: list[Site] = []

    def _index(self, mod: Module) -> None:
        for node in mod.tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                mod.functions[node.name] = node
            elif isinstance(node, ast.Import):
                for a in node.names:
                    mod.aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    mod.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    # -- module constants ------------------------------------------------------------------

    def consts(self, modname: str) -> set[str]:
        """Names of ``modname``'s module-level constants (fixpoint over its assignments)."""
        if modname in self._consts:
            return self._consts[modname]
        if modname in self._pending:
            return set()  # an import cycle: no constants through it
        self._pending.add(modname)
        mod = self.modules[modname]
        found: set[str] = set()
        bindings = _bindings(mod.tree.body)
        changed = True
        while changed:
            changed = False
            for name, values in bindings.items():
                if name in found:
                    continue
                scope = Scope(self, mod, found, None)
                if all(v is not None and scope.const(v) for v in values):
                    found.add(name)
                    changed = True
        self._pending.discard(modname)
        self._consts[modname] = found
        return found

    def resolve(self, dotted: str) -> tuple[str, str] | None:
        """(module, name) when ``dotted`` names a constant candidate in an audited module."""
        modname, _, name = dotted.rpartition(".")
        if modname in self.modules:
            return modname, name
        return None

    # -- the walk --------------------------------------------------------------------------

    def run(self) -> list[Site]:
        for mod in self.modules.values():
            module_scope = Scope(self, mod, self.consts(mod.name), None)
            self._walk(mod, mod.tree.body, module_scope, None)
        self._check_obligations()
        return self.sites

    def _walk(
        self,
        mod: Module,
        body: list[ast.stmt],
        scope: Scope,
        function: ast.FunctionDef | ast.AsyncFunctionDef | None,
    ) -> None:
        for node in _own_nodes(body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = Scope.for_function(self, mod, node, scope)
                self._walk(mod, node.body, inner, node)
            elif isinstance(node, ast.Lambda):
                inner = Scope(self, mod, set(), scope, shadowed=_params(node.args))
                self._check_expr(mod, node.body, inner, function)
            elif isinstance(node, ast.ClassDef):
                self._walk(mod, node.body, scope, function)
            elif isinstance(node, ast.Call):
                self._check_call(mod, node, scope, function)

    def _check_expr(
        self,
        mod: Module,
        expr: ast.expr,
        scope: Scope,
        function: ast.FunctionDef | ast.AsyncFunctionDef | None,
    ) -> None:
        for node in ast.walk(expr):
            if isinstance(node, ast.Call):
                self._check_call(mod, node, scope, function)

    def _check_call(
        self,
        mod: Module,
        call: ast.Call,
        scope: Scope,
        function: ast.FunctionDef | ast.AsyncFunctionDef | None,
    ) -> None:
        statement: ast.expr | None = None
        if isinstance(call.func, ast.Attribute) and call.func.attr in SINKS:
            statement = call.args[0] if call.args else _keyword(call, "query")
        elif scope.dotted(call.func) == COMPOSE:
            statement = call.args[0] if call.args else None
        if statement is None:
            return
        const = scope.const(statement)
        if (
            not const
            and isinstance(statement, ast.Name)
            and function is not None
            and statement.id in _params(function.args)
            and statement.id not in scope.rebound
        ):
            # A helper's parameter: constant if every caller passes a constant.
            self.obligations.add((mod.name, function.name, statement.id))
            const = True
        self.sites.append(Site(mod.file, call.lineno, ast.unparse(statement), const))

    def _check_obligations(self) -> None:
        for modname, fname, param in sorted(self.obligations):
            fn = self.modules[modname].functions.get(fname)
            if fn is None:  # a method or nested helper: its callers cannot be found statically
                self.sites.append(Site(self.modules[modname].file, 0, f"{fname}({param})", False))
                continue
            index = [a.arg for a in fn.args.posonlyargs + fn.args.args].index(param)
            for mod in self.modules.values():
                for scope, call in _calls_to(self, mod, modname, fname):
                    if not isinstance(call, ast.Call):  # passed around: callers unknown
                        self.sites.append(Site(mod.file, call.lineno, ast.unparse(call), False))
                        continue
                    arg = call.args[index] if index < len(call.args) else _keyword(call, param)
                    ok = arg is not None and scope.const(arg)
                    shown = ast.unparse(arg) if arg is not None else param
                    self.sites.append(Site(mod.file, call.lineno, f"{fname}(.., {shown})", ok))


class Scope:
    """Which names are constant here: the function's locals, then enclosing scopes, then the
    module's constants and imported ones."""

    def __init__(
        self,
        audit: Audit,
        mod: Module,
        const_names: set[str],
        parent: Scope | None,
        *,
        shadowed: set[str] | None = None,
        rebound: set[str] | None = None,
    ) -> None:
        self.audit = audit
        self.mod = mod
        self.names = const_names
        self.parent = parent
        self.shadowed = shadowed or set()  # locals here that are not constant
        self.rebound = rebound or set()

    @classmethod
    def for_function(
        cls,
        audit: Audit,
        mod: Module,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        parent: Scope,
        const_params: frozenset[str] = frozenset(),
    ) -> Scope:
        params = _params(fn.args)
        bindings = _bindings(fn.body)
        local = set(bindings) | params
        # Optimistic fixpoint: assume every local constant, drop those with a non-constant
        # binding until nothing changes (loops such as ``filters += " AND ..."`` stay constant).
        const = (set(bindings) - params) | set(const_params)
        scope = cls(audit, mod, const, parent, shadowed=local - const, rebound=set(bindings))
        changed = True
        while changed:
            changed = False
            for name in list(const):
                if name in const_params:
                    continue
                values = bindings.get(name, [])
                if not all(v is not None and scope.const(v) for v in values):
                    const.discard(name)
                    scope.shadowed.add(name)
                    changed = True
        return scope

    def lookup(self, name: str) -> bool:
        if name in self.names:
            return True
        if name in self.shadowed:
            return False
        if self.parent is not None:
            return self.parent.lookup(name)
        if name in self.audit.consts(self.mod.name):
            return True
        target = self.mod.aliases.get(name)
        if target is not None:
            found = self.audit.resolve(target)
            return found is not None and found[1] in self.audit.consts(found[0])
        return False

    def dotted(self, expr: ast.expr) -> str | None:
        """``a.b.c`` with ``a`` expanded through the module's imports."""
        parts: list[str] = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        head = self.mod.aliases.get(expr.id, expr.id)
        return ".".join([head, *reversed(parts)])

    def const(self, e: ast.expr) -> bool:
        if isinstance(e, ast.Constant):
            return True
        if isinstance(e, ast.JoinedStr):
            return all(
                self.const(v.value) if isinstance(v, ast.FormattedValue) else True
                for v in e.values
            )
        if isinstance(e, ast.BinOp):
            return self.const(e.left) and self.const(e.right)
        if isinstance(e, ast.Tuple | ast.List | ast.Set):
            return all(self.const(x) for x in e.elts)
        if isinstance(e, ast.Dict):
            return all(self.const(x) for x in [*e.values, *(k for k in e.keys if k)])
        if isinstance(e, ast.IfExp):
            return self.const(e.body) and self.const(e.orelse)
        if isinstance(e, ast.Subscript):
            return self.const(e.value)
        if isinstance(e, ast.Name):
            return self.lookup(e.id)
        if isinstance(e, ast.Attribute):
            dotted = self.dotted(e)
            found = self.audit.resolve(dotted) if dotted else None
            return found is not None and found[1] in self.audit.consts(found[0])
        if isinstance(e, ast.GeneratorExp | ast.ListComp):
            return self._comprehension(e)
        if isinstance(e, ast.Call):
            return self._call(e)
        return False

    def _comprehension(self, e: ast.GeneratorExp | ast.ListComp) -> bool:
        targets: set[str] = set()
        for gen in e.generators:
            if not self.const(gen.iter):
                return False
            targets |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        return Scope(self.audit, self.mod, targets, self).const(e.elt)

    def _call(self, e: ast.Call) -> bool:
        args = [*e.args, *(k.value for k in e.keywords)]
        dotted = self.dotted(e.func)
        if dotted in QUOTED or dotted == "int":
            return True
        if dotted == COMPOSE:
            return all(self.const(a) for a in args)
        if isinstance(e.func, ast.Attribute) and e.func.attr in STRING_METHODS:
            return self.const(e.func.value) and all(self.const(a) for a in args)
        if isinstance(e.func, ast.Name) and e.func.id in self.mod.functions:
            # A module helper returning SQL text: constant if its arguments are and every
            # ``return`` is, given constant parameters.
            if not all(self.const(a) for a in args):
                return False
            fn = self.mod.functions[e.func.id]
            inner = Scope.for_function(
                self.audit, self.mod, fn, Scope(self.audit, self.mod, set(), None),
                const_params=frozenset(_params(fn.args)),
            )  # fmt: skip
            returns = [n.value for n in _own_nodes(fn.body) if isinstance(n, ast.Return)]
            return bool(returns) and all(v is not None and inner.const(v) for v in returns)
        return False


# -- AST helpers ---------------------------------------------------------------------------


def _own_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of ``body``, yielding nested functions, lambdas and classes without entering."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _params(args: ast.arguments) -> set[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return {a.arg for a in every if a is not None}


def _bindings(body: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    """What each name of this scope is bound to (None: something not an expression)."""
    out: dict[str, list[ast.expr | None]] = {}

    def bind(target: ast.expr, value: ast.expr | None) -> None:
        if isinstance(target, ast.Name):
            out.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple | ast.List):
            # Unpacking: each target gets "a part of" the value, constant if the value is.
            for elt in target.elts:
                bind(elt, value)
        elif isinstance(target, ast.Starred):
            bind(target.value, value)
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            out.setdefault(target.value.id, []).append(value)  # d[k] = value

    for node in _own_nodes(body):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                bind(t, node.value)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
            bind(node.target, node.value)
        elif isinstance(node, ast.For | ast.AsyncFor):
            bind(node.target, node.iter)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bind(node.optional_vars, None)
        elif isinstance(node, ast.NamedExpr):
            bind(node.target, node.value)
        elif isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.ExceptHandler
        ):
            out.setdefault(node.name or "", []).append(None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"append", "extend", "insert", "add", "update"}
            and isinstance(node.func.value, ast.Name)
        ):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                out.setdefault(node.func.value.id, []).append(arg)
    return out


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _calls_to(
    audit: Audit, mod: Module, modname: str, fname: str
) -> Iterator[tuple[Scope, ast.expr]]:
    """Calls of ``modname.fname`` in ``mod`` with the scope each is made in; a reference that is
    not a call (the helper passed around as a value) is yielded as itself."""

    def refers(scope: Scope, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Name) and mod.name == modname and expr.id == fname:
            return True
        return scope.dotted(expr) == f"{modname}.{fname}"

    def visit(body: list[ast.stmt], scope: Scope) -> Iterator[tuple[Scope, ast.expr]]:
        called: set[int] = set()
        for node in _own_nodes(body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(node.body, Scope.for_function(audit, mod, node, scope))
            elif isinstance(node, ast.Call) and refers(scope, node.func):
                called.add(id(node.func))
                yield scope, node
            elif (
                isinstance(node, ast.Name | ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and id(node) not in called
                and refers(scope, node)
            ):
                yield scope, node

    yield from visit(mod.tree.body, Scope(audit, mod, audit.consts(mod.name), None))


def audit_sources(sources: dict[str, tuple[str, str]]) -> list[Site]:
    return Audit(sources).run()


def package_sources() -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        name = ".".join(("store_service", *rel.with_suffix("").parts)).removesuffix(".__init__")
        out[name] = (rel.as_posix(), path.read_text())
    return out


# -- the audit of the store --------------------------------------------------------------------


def test_every_statement_of_the_store_is_a_constant() -> None:
    sites = audit_sources(package_sources())
    # Not vacuous: the adapter's statements were all found (there are well over forty).
    assert len(sites) >= 40, [s.source for s in sites]
    allowed_used = {(s.file, s.source) for s in sites if (s.file, s.source) in ALLOWED}
    assert allowed_used == set(ALLOWED), "an ALLOWED entry no longer matches any statement"
    bad = [
        f"{s.file}:{s.line}: {s.source}"
        for s in sites
        if not s.const and (s.file, s.source) not in ALLOWED
    ]
    assert bad == [], (
        "SQL built from something other than constants (pass values as parameters, names "
        "through psycopg.sql.Identifier):\n" + "\n".join(bad)
    )


def test_the_claim_and_list_queries_are_seen_and_constant() -> None:
    """The statements assembled from fragments are among the audited ones."""
    sites = {(s.file, s.source): s for s in audit_sources(package_sources())}
    assert sites[("adapters/postgres/leases.py", "query")].const
    assert sites[("adapters/postgres/flows.py", "query")].const
    assert sites[("adapters/postgres/definitions.py", "query")].const


# -- the checker itself: each way of smuggling a value in is caught ------------------------------

_HEADER = """
from psycopg import sql
TABLE = "flows"
COLUMNS = "a, b"
def helper(column):
    return f"x.{column}"
"""

SAFE = {
    "literal": 'conn.execute("SELECT 1 FROM flows WHERE ns = %s", (ns,))',
    "module constant in an f-string": 'conn.execute(f"SELECT {COLUMNS} FROM {TABLE}")',
    "grown from literals": (
        'where = ["ns = %(ns)s"]\n'
        'if name: where.append("name = %(name)s")\n'
        'conn.execute(f"SELECT 1 FROM t WHERE {\' AND \'.join(where)}", params)'
    ),
    "+= of literals": (
        'filters = ""\nif ids: filters += " AND id = ANY(%(ids)s)"\n'
        'conn.execute("SELECT 1 {f}".format(f=filters), params)'
    ),
    "helper of constants": 'conn.execute("SELECT " + ", ".join(helper(c) for c in ("a", "b")))',
    "quoted identifier": 'conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(ns)))',
    "number": 'conn.execute("SELECT %d" % int(ns))',
}
UNSAFE = {
    "f-string of a value": "conn.execute(f\"SELECT 1 FROM flows WHERE ns = '{ns}'\")",
    "% of a value": "conn.execute(\"SELECT 1 FROM flows WHERE ns = '%s'\" % ns)",
    ".format of a value": "conn.execute(\"SELECT 1 WHERE ns = '{}'\".format(ns))",
    "+ of a value": "conn.execute(\"SELECT 1 WHERE ns = '\" + ns + \"'\")",
    "+= of a value": 'q = "SELECT 1"\nq += ns\nconn.execute(q)',
    "appended value": (
        'where = ["a = 1"]\nwhere.append(f"ns = \'{ns}\'")\n'
        'conn.execute(" AND ".join(where))'
    ),
    "reassigned from a value": 'q = "SELECT 1"\nif ns: q = ns\nconn.execute(q)',
    "helper given a value": 'conn.execute("SELECT " + helper(ns))',
    "sql.SQL of a value": 'conn.execute(sql.SQL(ns).format(sql.Identifier("x")))',
    "attribute of a request": "conn.execute(request.query)",
    "keyword argument": 'conn.execute(query=f"SELECT {ns}")',
    "executemany": 'conn.executemany(f"INSERT INTO t VALUES ({ns})", [])',
    "in a lambda": 'run(lambda c: c.execute(f"SELECT {ns}"))',
}


def _one(body: str) -> list[Site]:
    text = _HEADER + "async def handler(conn, ns, name, ids, params, request, run):\n"
    text += textwrap.indent(body, "    ") + "\n"
    return audit_sources({"snippet": ("snippet.py", text)})


@pytest.mark.parametrize("case", SAFE)
def test_the_checker_accepts(case: str) -> None:
    sites = _one(SAFE[case])
    assert sites
    assert all(s.const for s in sites), sites


@pytest.mark.parametrize("case", UNSAFE)
def test_the_checker_refuses(case: str) -> None:
    sites = _one(UNSAFE[case])
    assert any(not s.const for s in sites), sites


def test_the_checker_follows_a_helpers_parameter_to_its_callers() -> None:
    text = _HEADER + textwrap.dedent(
        """
        async def fetch(conn, query, params):
            return await conn.execute(query, params)

        async def good(conn):
            return await fetch(conn, f"SELECT {COLUMNS}", {})

        async def bad(conn, ns):
            return await fetch(conn, f"SELECT {ns}", {})
        """
    )
    sites = audit_sources({"snippet": ("snippet.py", text)})
    verdicts = {s.source: s.const for s in sites}
    assert verdicts["fetch(.., f'SELECT {COLUMNS}')"] is True
    assert verdicts["fetch(.., f'SELECT {ns}')"] is False


def test_the_checker_follows_constants_across_modules() -> None:
    sources = {
        "pkg.rows": ("rows.py", 'COLUMNS = "a, b"\nNOT_CONST = input()\n'),
        "pkg.use": (
            "use.py",
            "from pkg.rows import COLUMNS, NOT_CONST\nfrom pkg import rows as r\n"
            "async def f(conn):\n"
            '    await conn.execute(f"SELECT {COLUMNS}")\n'
            '    await conn.execute(f"SELECT {r.COLUMNS}")\n'
            '    await conn.execute(f"SELECT {NOT_CONST}")\n'
            '    await conn.execute(f"SELECT {r.NOT_CONST}")\n',
        ),
    }
    assert [s.const for s in audit_sources(sources)] == [True, True, False, False]

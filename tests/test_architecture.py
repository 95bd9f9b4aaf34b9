"""Layering rules for hubd/, checked on the source with `ast` (imports inside functions
count too):

- hubd.protocol is pure: from hubd only hubd.protocol; no trio or web stack.
- hubd.core imports no web framework or server, no redis client, and nothing from
  hubd.backplane, hubd.web, hubd.service or hubd.cli.
- hubd.backplane imports from hubd only hubd.backplane, hubd.core, hubd.protocol,
  hubd.settings and hubd.logs, and no web framework or server; only
  hubd.backplane.redis imports the redis client.
- A backplane changes the hub only through its methods: no module under hubd/backplane/
  assigns an attribute of `hub` or `self.hub` (or deeper, as in `hub.ids.epoch`).
- hubd.web imports neither hubd.service nor hubd.cli, no redis client, and not
  hubd.backplane.redis (it may import hubd.backplane).
- Only hubd/__main__.py imports hubd.cli.
- Every module belongs to a layer of `LAYERS` and imports from hubd only the layers that
  table lists for it: one-way arrows, checked to form no cycle.
- The connection state machine (hubd.core.session) imports no trio or other I/O and
  nothing of the modules that drive it.
- hubd.client (the client library) and hubd.hubctl import from hubd only hubd.client,
  hubd.hubctl, hubd.protocol (the wire format, pure: shared with the server) and the
  package itself (its version): no server code, no web stack, no redis client, so a
  client never loads the daemon.
- hubd.protocol owns the wire vocabulary: outside it, no module spells out a notice,
  reply or reason name (`hubd.protocol.notices.VOCABULARY`) as a string constant that is
  compared, passed, assigned or sent as a `message`/`reason`, and none builds an
  `Envelope(...)` itself (`hubd.protocol.notices.envelope` does).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hubd.protocol.notices import VOCABULARY


@functools.cache
def parse(source: str) -> ast.Module:
    """Each module parsed once for all the checks below (read-only walks)."""
    return ast.parse(source)


PACKAGE = Path(__file__).resolve().parents[1] / "hubd"

WEB_STACK = ("quart", "quart_trio", "hypercorn", "werkzeug")
REDIS = ("redis", "coredis")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module a source file imports, absolute. `from a.b import c` yields both `a.b`
    and `a.b.c` (c may be a submodule, as in `from hubd import cli`)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def modules() -> Iterator[tuple[str, Path, set[str]]]:
    yield from _modules()


@functools.cache
def _modules() -> tuple[tuple[str, Path, set[str]], ...]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        found.append(
            (name, path, imported_names(path.read_text(), name, path.name == "__init__.py"))
        )
    return tuple(found)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(layer: str, rule: Callable[[str], bool]) -> list[str]:
    found = []
    for module, path, names in modules():
        if not within(module, (layer,)):
            continue
        for name in sorted(names):
            if rule(name):
                found.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return found


# -- the walker itself ---------------------------------------------------------------------


def test_walker_sees_every_form_of_import() -> None:
    source = """
import trio
import quart_trio.app as qa
from hubd import cli
from hubd.core.hub import Hub
from . import channels
from ..core import auth

def later():
    import redis
"""
    names = imported_names(source, "hubd.protocol.envelope")
    for expected in [
        "trio",
        "quart_trio.app",
        "hubd.cli",
        "hubd.core.hub",
        "hubd.protocol.channels",
        "hubd.core.auth",
        "redis",
    ]:
        assert expected in names


def test_walker_finds_the_real_package() -> None:
    found = {name: names for name, _, names in modules()}
    assert {"hubd.protocol.envelope", "hubd.core.hub", "hubd.web.app", "hubd.__main__"} <= set(
        found
    )
    assert "trio" in found["hubd.core.hub"]
    assert "hubd.cli" in found["hubd.__main__"]


def test_within() -> None:
    assert within("quart_trio.app", ("quart_trio",))
    assert within("quart", ("quart",))
    assert not within("quarter", ("quart",))


# -- the rules -----------------------------------------------------------------------------


def test_protocol_is_pure() -> None:
    assert (
        violations(
            "hubd.protocol",
            lambda n: (
                (within(n, ("hubd",)) and not within(n, ("hubd.protocol",)))
                or within(n, ("trio", "trio_websocket", *WEB_STACK))
            ),
        )
        == []
    )


def test_core_imports_no_web_stack_no_redis_and_no_outer_layer() -> None:
    assert (
        violations(
            "hubd.core",
            lambda n: within(
                n, (*WEB_STACK, *REDIS, "hubd.backplane", "hubd.web", "hubd.service", "hubd.cli")
            ),
        )
        == []
    )


BACKPLANE_MAY_USE = ("hubd.backplane", "hubd.core", "hubd.protocol", "hubd.settings", "hubd.logs")


def test_backplane_imports_only_core_settings_and_logs_and_no_web_stack() -> None:
    def outside(name: str) -> bool:
        if within(name, ("hubd",)):
            return not within(name, BACKPLANE_MAY_USE)
        return within(name, WEB_STACK)

    assert violations("hubd.backplane", outside) == []


def test_only_the_redis_backplane_imports_the_redis_client() -> None:
    found = [
        v
        for v in violations("hubd.backplane", lambda n: within(n, REDIS))
        if not v.startswith("hubd/backplane/redis/")
    ]
    assert found == []


def test_web_imports_neither_service_nor_cli_nor_redis() -> None:
    assert (
        violations(
            "hubd.web",
            lambda n: within(n, ("hubd.service", "hubd.cli", "hubd.backplane.redis", *REDIS)),
        )
        == []
    )


# -- the layers: one-way arrows (docs/design.md, "Layers") ---------------------------------

# Every module of hubd belongs to the longest entry that prefixes its name, and may import
# from hubd only its own layer, the layers listed here, and the package root (its
# version). The arrows form no cycle, so each layer can be read, tested and replaced
# knowing only what is below it.
LAYERS: dict[str, frozenset[str]] = {
    "hubd.protocol": frozenset(),
    "hubd.settings": frozenset({"hubd.protocol"}),
    "hubd.logs": frozenset(),
    "hubd.tasks": frozenset(),
    "hubd.sdnotify": frozenset(),
    "hubd.gc_policy": frozenset(),
    "hubd.core": frozenset({"hubd.protocol", "hubd.settings", "hubd.logs"}),
    "hubd.backplane": frozenset({"hubd.core", "hubd.protocol", "hubd.settings", "hubd.logs"}),
    "hubd.budget": frozenset({"hubd.core", "hubd.settings"}),
    "hubd.metrics": frozenset({"hubd.core", "hubd.backplane"}),
    "hubd.web": frozenset(
        {
            "hubd.core",
            "hubd.backplane",
            "hubd.protocol",
            "hubd.settings",
            "hubd.logs",
            "hubd.metrics",
            "hubd.tasks",
        }
    ),
    # What a reload changes: the rules, for the daemon and for check-config alike.
    "hubd.config_diff": frozenset({"hubd.core", "hubd.settings"}),
    "hubd.reload": frozenset({"hubd.config_diff", "hubd.core", "hubd.settings", "hubd.web"}),
    "hubd.lifecycle": frozenset(
        {
            "hubd.config_diff",
            "hubd.reload",
            "hubd.sdnotify",
            "hubd.core",
            "hubd.logs",
            "hubd.settings",
            "hubd.web",
        }
    ),
    "hubd.service": frozenset(
        {
            "hubd.lifecycle",
            "hubd.web",
            "hubd.metrics",
            "hubd.backplane",
            "hubd.core",
            "hubd.settings",
            "hubd.logs",
            "hubd.sdnotify",
            "hubd.gc_policy",
        }
    ),
    "hubd.cli": frozenset(
        {
            "hubd.service",
            "hubd.budget",
            "hubd.config_diff",
            "hubd.core",
            "hubd.logs",
            "hubd.sdnotify",
            "hubd.settings",
        }
    ),
    "hubd.__main__": frozenset({"hubd.cli"}),
    # The client library and its command line: the wire format only, never the daemon.
    "hubd.client": frozenset({"hubd.protocol"}),
    "hubd.hubctl": frozenset({"hubd.client", "hubd.protocol"}),
}


def layer_of(module: str) -> str | None:
    """The longest LAYERS entry that is `module` or a package above it."""
    found = [layer for layer in LAYERS if within(module, (layer,))]
    return max(found, key=len) if found else None


def test_every_module_is_in_a_layer() -> None:
    assert [name for name, _, _ in modules() if name != "hubd" and layer_of(name) is None] == []


def test_the_layers_form_no_cycle() -> None:
    done: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, " -> ".join((*path, layer))
        if layer not in done:
            for below in LAYERS[layer]:
                visit(below, (*path, layer))
            done.add(layer)

    for layer in LAYERS:
        visit(layer, ())


def layer_violations(found: Iterable[tuple[str, Path, set[str]]]) -> list[str]:
    """Each import of a hubd module from a layer that LAYERS does not list for the
    importing module's own layer."""
    wrong = []
    for module, path, names in found:
        own = layer_of(module)
        if own is None:
            continue
        for name in sorted(names):
            if not within(name, ("hubd",)) or name in ("hubd", "hubd.__version__"):
                continue
            target = layer_of(name)
            if target is not None and target != own and target not in LAYERS[own]:
                wrong.append(f"{path} ({own}) imports {name}")
    return wrong


def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert layer_violations(modules()) == []


def test_the_layer_check_sees_a_wrong_arrow() -> None:
    """What the rule must refuse: the web layer reaching up to reload (a cycle), the core
    reaching the web layer, a client importing the daemon."""
    fake = [
        ("hubd.web.lifecycle", Path("web/lifecycle.py"), {"hubd.reload", "hubd.core.hub"}),
        ("hubd.core.hub", Path("core/hub.py"), {"hubd.web.ws.serve", "hubd"}),
        ("hubd.client.api", Path("client/api.py"), {"hubd.core.session", "hubd.protocol"}),
    ]
    assert layer_violations(fake) == [
        "web/lifecycle.py (hubd.web) imports hubd.reload",
        "core/hub.py (hubd.core) imports hubd.web.ws.serve",
        "client/api.py (hubd.client) imports hubd.core.session",
    ]


def test_the_connection_state_machine_does_no_io() -> None:
    """`hubd.core.session` decides, the trio tasks of `hubd.core.serving` act: the state
    machine imports no trio, no socket or thread machinery, and nothing of the modules
    that drive it, so it runs (and is tested) without an event loop."""
    io = ("trio", "anyio", "asyncio", "socket", "selectors", "threading", "time")
    drivers = ("hubd.core.hub", "hubd.core.serving", "hubd.core.resume", "hubd.core.transport")
    (names,) = [names for module, _, names in modules() if module == "hubd.core.session"]
    assert sorted(n for n in names if within(n, (*io, *drivers))) == []


# -- a backplane changes the hub only through its methods ----------------------------------


def _rooted_at_hub(node: ast.expr) -> bool:
    """True for `hub.x`, `self.hub.x`, `hub.a.b`, `self.hub.a[i].b`, ...: an expression
    reaching into a hub through a name `hub` or an attribute `self.hub`."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        value = node.value
        if isinstance(value, ast.Name) and value.id == "hub" and isinstance(node, ast.Attribute):
            return True
        if (
            isinstance(node, ast.Attribute)
            and isinstance(value, ast.Attribute)
            and value.attr == "hub"
            and isinstance(value.value, ast.Name)
            and value.value.id == "self"
        ):
            return True
        node = value
    return False


def hub_writes(source: str) -> list[str]:
    """Every assignment (plain, augmented, annotated, or in a tuple target) whose target
    is an attribute (or an item of one) reached through `hub` or `self.hub`."""
    found = []
    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        else:
            continue
        pending = list(targets)
        while pending:
            target = pending.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                pending.extend(target.elts)
            elif isinstance(target, ast.Starred):
                pending.append(target.value)
            elif _rooted_at_hub(target):
                found.append(f"line {node.lineno}: {ast.unparse(target)}")
    return found


def test_the_hub_write_check_sees_every_form() -> None:
    source = """
hub.last_seq = 1
self.hub.keep_history = False
hub.ids.epoch = "x"
self.hub.history.size = 0
hub.published["a"] += 1
a, hub.draining = 1, True
self.hub = hub
other.hub.last_seq = 2
hub = None
x = hub.last_seq
"""
    assert [line.split(": ")[1] for line in hub_writes(source)] == [
        "hub.last_seq",
        "self.hub.keep_history",
        "hub.ids.epoch",
        "self.hub.history.size",
        "hub.published['a']",
        "hub.draining",
    ]


def test_backplanes_never_assign_hub_fields() -> None:
    backplane = PACKAGE / "backplane"
    assert sorted(backplane.rglob("*.py")), "hubd/backplane/ holds no module"
    found = [
        f"{path.relative_to(PACKAGE.parent)} {write}"
        for path in sorted(backplane.rglob("*.py"))
        for write in hub_writes(path.read_text())
    ]
    assert found == []


def test_only_main_imports_cli() -> None:
    importers = [name for name, _, names in modules() if "hubd.cli" in names]
    assert importers == ["hubd.__main__"]


def test_client_and_hubctl_import_no_server_code() -> None:
    allowed = ("hubd.client", "hubd.hubctl", "hubd.protocol")

    def server_side(name: str) -> bool:
        if name == "hubd" or name == "hubd.__version__":
            return False
        if within(name, ("hubd",)):
            return not within(name, allowed)
        return within(name, (*WEB_STACK, *REDIS))

    assert violations("hubd.client", server_side) == []
    assert violations("hubd.hubctl", server_side) == []


# -- the wire vocabulary lives in hubd.protocol --------------------------------------------

# Methods whose first argument is a key being looked up (a body field), not a name sent.
_KEY_LOOKUPS = frozenset({"get", "pop", "setdefault"})


def vocabulary_literals(source: str, vocabulary: frozenset[str] = VOCABULARY) -> list[str]:
    """String constants from `vocabulary` used as a name on the wire: an operand of a
    comparison, an argument of a call (but not the key of `.get`/`.pop`/`.setdefault`),
    a value assigned or returned, or the value of a `"message"`/`"reason"` key in a dict
    literal; inside a tuple, list or set literal in those places too. Docstrings, dict
    keys, f-string text and longer sentences are not flagged."""
    found: list[str] = []

    def check(node: ast.expr | None) -> None:
        if node is None:
            return
        # One level into a container literal: `(HEALTH, "ping")`, `{"error", ...}`.
        elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        for element in elements:
            if isinstance(element, ast.Constant) and element.value in vocabulary:
                found.append(f"line {element.lineno}: {element.value!r}")

    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                check(operand)
        elif isinstance(node, ast.Call):
            args = node.args
            if (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in _KEY_LOOKUPS
                and args
                and isinstance(args[0], ast.Constant)
            ):
                args = args[1:]
            for arg in args:
                check(arg)
            for keyword in node.keywords:
                check(keyword.value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return)):
            check(node.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in ("message", "reason"):
                    check(value)
    return sorted(found, key=lambda f: int(f.split(":")[0].removeprefix("line ")))


def test_the_vocabulary_check_sees_every_form() -> None:
    source = """
\"\"\"Docstring naming events_dropped.\"\"\"
def f(message, body, kind):
    \"\"\"pong\"\"\"
    if message == "events_dropped":
        pass
    if kind == (HEALTH, "ping"):
        pass
    if message in {"unsubscribed", OTHER}:
        pass
    reply(session, GLOBAL, "error", None)
    Envelope(message="replay_complete")
    GAP = "backplane_gap"
    send({"event_type": "system", "message": "client-id"})
    NOTICES = frozenset({"pong"})
    return "error"
def g(body, exc, parsed):
    body.get("error", "")
    parsed.get("unsubscribed")
    x = {"error": str(exc), "unsubscribed": []}
    name = exc.name or "error"
    pairs([("unsubscribed", 1)])
    raise ValueError(f"accepted is 'client-id' and {body}")
"""
    assert [line.split(": ")[1] for line in vocabulary_literals(source)] == [
        "'events_dropped'",
        "'ping'",
        "'unsubscribed'",
        "'error'",
        "'replay_complete'",
        "'backplane_gap'",
        "'client-id'",
        "'pong'",
        "'error'",
    ]


def test_only_the_protocol_spells_out_notice_names() -> None:
    protocol = PACKAGE / "protocol"
    found = [
        f"{path.relative_to(PACKAGE.parent)} {literal}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.is_relative_to(protocol)
        for literal in vocabulary_literals(path.read_text())
    ]
    assert found == []


def envelope_constructions(source: str) -> list[str]:
    """Every call of `Envelope(...)` or `<module>.Envelope(...)`."""
    return [
        f"line {node.lineno}"
        for node in ast.walk(parse(source))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "Envelope")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "Envelope")
        )
    ]


def test_only_the_protocol_builds_envelopes() -> None:
    protocol = PACKAGE / "protocol"
    found = [
        f"{path.relative_to(PACKAGE.parent)} {where}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.is_relative_to(protocol)
        for where in envelope_constructions(path.read_text())
    ]
    assert found == []

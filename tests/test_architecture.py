"""Layering rules for hubd/, checked on the source with `ast` (imports inside functions
count too):

- hubd.protocol is pure: from hubd only hubd.protocol; no trio or web stack.
- hubd.core imports no web framework or server, no redis client, and nothing from
  hubd.web, hubd.service or hubd.cli.
- hubd.web imports neither hubd.service nor hubd.cli, and no redis client.
- Only hubd/__main__.py imports hubd.cli.
- hubd.client (the client library) and hubd.hubctl import from hubd only hubd.client,
  hubd.hubctl and the package itself (its version): no server code, no web stack, no
  redis client, so a client never loads the daemon.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

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
    for node in ast.walk(ast.parse(source)):
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
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        yield name, path, imported_names(path.read_text(), name, path.name == "__init__.py")


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
            lambda n: within(n, (*WEB_STACK, *REDIS, "hubd.web", "hubd.service", "hubd.cli")),
        )
        == []
    )


def test_web_imports_neither_service_nor_cli_nor_redis() -> None:
    assert violations("hubd.web", lambda n: within(n, ("hubd.service", "hubd.cli", *REDIS))) == []


def test_only_main_imports_cli() -> None:
    importers = [name for name, _, names in modules() if "hubd.cli" in names]
    assert importers == ["hubd.__main__"]


def test_client_and_hubctl_import_no_server_code() -> None:
    allowed = ("hubd.client", "hubd.hubctl")

    def server_side(name: str) -> bool:
        if name == "hubd" or name == "hubd.__version__":
            return False
        if within(name, ("hubd",)):
            return not within(name, allowed)
        return within(name, (*WEB_STACK, *REDIS))

    assert violations("hubd.client", server_side) == []
    assert violations("hubd.hubctl", server_side) == []

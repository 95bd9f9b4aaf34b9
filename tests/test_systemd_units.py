"""systemd/hubd.service, systemd/hubd.socket and the template systemd/hubd@.service:
`systemd-analyze verify` accepts them (with the install paths pointed at real executables;
the template as its instance hubd@1.service), and they say what hubd relies on: readiness
and watchdog over sd_notify, reload by SIGHUP, a stop budget above the drain, the hardening,
a socket unit whose addresses are hubd's default listen address, and a template that is
hubd.service but for what must differ per instance."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubd import cli
from hubd.settings import LimitsSettings, ServerSettings
from hubd.settings.instance import runtime_dir_for

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SERVICE = UNITS / "hubd.service"
SOCKET = UNITS / "hubd.socket"
TEMPLATE = UNITS / "hubd@.service"
INSTALLED_HUBD = "/opt/hubd/.venv/bin/hubd"  # where docs/operations.md installs it
VENV_HUBD = Path(sys.executable).with_name("hubd")

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections of a unit file, each a list of (key, value) in file order (keys repeat)."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        assert section is not None, f"setting outside a section: {raw!r}"
        assert "=" in line and not line.endswith("\\"), f"unexpected line: {raw!r}"
        key, value = line.split("=", 1)
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str:
    """The one value of `key`; fails if it is missing or set more than once."""
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= is set {len(found)} times: {found}"
    return found[0]


def seconds(span: str) -> float:
    """A systemd time span ("30", "30s", "1min 30s", "2min") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    for number, unit in parts:
        assert unit in units, span
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(SERVICE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def socket_unit() -> Unit:
    return parse_unit(SOCKET.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def template() -> Unit:
    return parse_unit(TEMPLATE.read_text(encoding="utf-8"))


# -- systemd-analyze verify ----------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: install systemd "
            "(apt-get install -y --no-install-recommends systemd; .ci/run does it)",
            pytrace=False,
        )
    return path


def kill_binary() -> str:
    path = shutil.which("kill") or "/bin/kill"
    assert Path(path).is_file(), "no kill executable to point ExecReload= at"
    return path


def installable_copy(directory: Path, *, real_paths: bool = True) -> list[Path]:
    """The three unit files copied to `directory` (service, socket, template); with
    `real_paths`, the programs of every Exec*= line point at executables that exist here, so
    that verify can check them."""
    directory.mkdir()
    copies = []
    for source in (SERVICE, SOCKET, TEMPLATE):
        text = source.read_text(encoding="utf-8")
        if real_paths:
            text = text.replace(INSTALLED_HUBD, str(VENV_HUBD))
            text = re.sub(r"(?m)^(ExecReload=)/bin/kill\b", rf"\g<1>{kill_binary()}", text)
            for key, line in parse_unit(text).get("Service", []):
                if key.startswith("Exec"):
                    program = line.lstrip("-@:+!").split()[0]
                    assert Path(program).is_file(), f"{key}={line}: no such program here"
        copy = directory / source.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    return copies


def verify(*paths: Path) -> tuple[int, list[str]]:
    result = subprocess.run(
        [systemd_analyze(), "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=paths[0].parent,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def about_units(lines: list[str]) -> list[str]:
    return [line for line in lines if any(unit in line for unit in ("hubd.", "hubd@"))]


def instance(template_copy: Path, n: int = 1) -> Path:
    """What verify is given for instance `n` of a template: hubd@1.service, a name no file
    has; systemd-analyze loads it from hubd@.service in the same directory with %i = 1."""
    return template_copy.with_name(template_copy.name.replace("@.", f"@{n}."))


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    service, socket_copy, template_copy = installable_copy(tmp_path / "units")
    rc, lines = verify(service, socket_copy)
    assert rc == 0, "\n".join(lines)
    assert about_units(lines) == [], "\n".join(lines)
    rc, lines = verify(socket_copy)  # the socket unit alone finds its service next to it
    assert rc == 0, "\n".join(lines)
    assert about_units(lines) == [], "\n".join(lines)
    rc, lines = verify(instance(template_copy))
    assert rc == 0, "\n".join(lines)
    assert about_units(lines) == [], "\n".join(lines)


def test_verify_does_report_problems_in_these_files(tmp_path: Path) -> None:
    """The check above is not vacuous: a missing program and an unknown key are reported,
    naming the unit file."""
    service, socket_copy, template_copy = installable_copy(tmp_path / "units", real_paths=False)
    # A program that is missing on every host: INSTALLED_HUBD itself exists wherever
    # docs/operations.md was followed, and verify would then (rightly) accept it.
    missing = tmp_path / "not-installed" / "bin" / "hubd"
    text = service.read_text(encoding="utf-8")
    assert INSTALLED_HUBD in text
    service.write_text(text.replace(INSTALLED_HUBD, str(missing)), encoding="utf-8")
    socket_copy.write_text(
        socket_copy.read_text(encoding="utf-8").replace("Accept=no", "Acept=no"),
        encoding="utf-8",
    )
    _, lines = verify(service, socket_copy)
    reported = about_units(lines)
    assert any("hubd.service" in line and str(missing) in line for line in reported), lines
    assert any("hubd.socket" in line and "Acept" in line for line in reported), lines
    text = template_copy.read_text(encoding="utf-8")
    template_copy.write_text(
        text.replace(INSTALLED_HUBD, str(missing)).replace("WatchdogSec=", "WatchdogSecs="),
        encoding="utf-8",
    )
    _, lines = verify(instance(template_copy, 7))
    reported = about_units(lines)
    assert any("hubd@7.service" in line and str(missing) in line for line in reported), lines
    assert any("hubd@.service" in line and "WatchdogSecs" in line for line in reported), lines


# -- what the service unit promises ----------------------------------------------------------


def test_service_is_notify_type_with_a_watchdog(service: Unit) -> None:
    assert value(service, "Service", "Type") == "notify"
    assert value(service, "Service", "NotifyAccess") == "main"
    assert seconds(value(service, "Service", "WatchdogSec")) == 30
    # A missed watchdog deadline is a failure: it must lead to a restart.
    assert value(service, "Service", "Restart") in {"on-failure", "on-abnormal", "always"}


def test_service_runs_hubd_after_checking_the_same_config(service: Unit) -> None:
    start = value(service, "Service", "ExecStart").split()
    assert start[:2] == [INSTALLED_HUBD, "serve"] and start[2] == "--config", start
    pre = value(service, "Service", "ExecStartPre").split()
    assert pre == [INSTALLED_HUBD, "check-config", start[3]], pre


def test_service_reloads_with_sighup_to_the_main_process(service: Unit) -> None:
    reload = value(service, "Service", "ExecReload")
    assert re.fullmatch(r"/bin/kill (-HUP|-s HUP|-SIGHUP|-s SIGHUP) \$MAINPID", reload), reload


def test_service_stop_budget_is_above_the_drain(service: Unit) -> None:
    assert values(service, "Service", "KillSignal") in ([], ["SIGTERM"])
    stop = seconds(value(service, "Service", "TimeoutStopSec"))
    assert stop > ServerSettings().shutdown_timeout, stop


def test_service_file_limit_is_above_max_connections(service: Unit) -> None:
    limit = value(service, "Service", "LimitNOFILE")
    assert limit == "65536"
    assert int(limit) > LimitsSettings().max_connections


def test_service_hardening(service: Unit) -> None:
    dynamic = values(service, "Service", "DynamicUser")
    user = values(service, "Service", "User")
    assert dynamic == ["yes"] or (user and user[-1] not in {"root", "0"}), (dynamic, user)
    assert value(service, "Service", "ProtectSystem") == "strict"
    assert value(service, "Service", "NoNewPrivileges") == "yes"
    assert value(service, "Service", "PrivateTmp") == "yes"
    assert values(service, "Service", "CapabilityBoundingSet") == [""]  # no capability at all
    families = value(service, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_service_does_not_depend_on_the_socket_unit(service: Unit) -> None:
    """hubd binds [server] listen itself when no socket is passed: the socket is optional."""
    for key in ("Requires", "Requisite", "BindsTo", "After", "Sockets"):
        for item in values(service, "Unit", key) + values(service, "Service", key):
            assert "hubd.socket" not in item.split(), f"{key}={item}"


# -- what the socket unit promises -----------------------------------------------------------


def test_socket_listens_on_hubds_default_address_for_hubd_service(socket_unit: Unit) -> None:
    listen = values(socket_unit, "Socket", "ListenStream")
    assert listen == ["127.0.0.1:8080"]
    assert listen == ServerSettings().listen  # the same as running without the socket unit
    assert values(socket_unit, "Socket", "Accept") in ([], ["no"])  # one hubd, all connections
    assert value(socket_unit, "Socket", "Service") == "hubd.service"
    assert value(socket_unit, "Install", "WantedBy") == "sockets.target"


# -- what the template promises: hubd.service, N times on one address -------------------------

# The [Service] keys in which an instance differs from hubd.service, each for a reason the
# tests below check. Everything else (notify, watchdog, reload, stop budget, restarts,
# limits, hardening) is the same, key for key.
PER_INSTANCE = {
    "ExecStartPre",
    "ExecStart",
    "SyslogIdentifier",
    "RuntimeDirectory",
    "User",
    "Group",
}


def test_template_is_the_service_unit_but_for_the_instance(service: Unit, template: Unit) -> None:
    def same(unit: Unit) -> list[tuple[str, str]]:
        return [(k, v) for k, v in unit["Service"] if k not in PER_INSTANCE]

    assert same(template) == same(service)
    assert template["Install"] == service["Install"]
    for key in ("After", "Wants"):
        assert values(template, "Unit", key) == values(service, "Unit", key)


def test_template_runs_the_instance_of_the_same_config(service: Unit, template: Unit) -> None:
    config = value(service, "Service", "ExecStart").split()[3]
    start = value(template, "Service", "ExecStart").split()
    assert start == [INSTALLED_HUBD, "serve", "--config", config, "--instance", "%i"], start
    pre = value(template, "Service", "ExecStartPre").split()
    assert pre == [INSTALLED_HUBD, "check-config", "--instance", "%i", config], pre


def test_each_instance_has_the_runtime_directory_check_config_looks_in(template: Unit) -> None:
    directory = value(template, "Service", "RuntimeDirectory")
    assert "%i" in directory and "/" not in directory  # its own, not inside another's
    assert f"/run/{directory.replace('%i', '3')}" == runtime_dir_for(cli.DEFAULT_RUNTIME_DIR, 3)


def test_every_instance_runs_as_one_user(template: Unit) -> None:
    """SO_REUSEPORT shares a port only among sockets of one user: each instance must get the
    same dynamic user, which a fixed User= name gives (without it, one user per unit)."""
    assert value(template, "Service", "DynamicUser") == "yes"
    user = value(template, "Service", "User")
    assert user and "%" not in user and user not in {"root", "0"}
    assert value(template, "Service", "Group") == user


def test_each_instance_names_itself_in_the_journal(template: Unit) -> None:
    assert "%i" in value(template, "Service", "SyslogIdentifier")


def test_template_stops_the_single_instance_units(template: Unit) -> None:
    """hubd.service and hubd.socket hold the address without SO_REUSEPORT, so an instance
    could not bind beside them: starting one stops them instead of failing."""
    conflicts = " ".join(values(template, "Unit", "Conflicts")).split()
    assert {"hubd.service", "hubd.socket"} <= set(conflicts)
    for key in ("Sockets", "Requires", "BindsTo"):
        assert values(template, "Service", key) + values(template, "Unit", key) == []

"""What hubctl tells a newcomer: the default URL and the lookup order in --help,
--source-address and why it exists, what a 409 `ip_in_use` means and what to do about
it, and which development credential `make run`'s server takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubd.client import (
    AuthError,
    ConflictError,
    Credentials,
    ForbiddenError,
    HubdError,
    NetworkError,
)
from hubd.client.errors import error_from_response
from hubd.core import admission
from hubd.hubctl import main
from hubd.hubctl.config import DEFAULT_URL, DEFAULT_URL_SOURCE, Settings
from hubd.hubctl.main import another_source_address, explain

FILE = Path("/home/op/.config/hubd/hubctl.toml")


def settings(
    url: str = "http://127.0.0.1:8080",
    credentials: Credentials | None = None,
    url_source: str = "--url",
) -> Settings:
    return Settings(
        url=url,
        credentials=credentials or Credentials(token="some-token"),
        url_source=url_source,
        credential_source="HUBD_TOKEN",
        config_path=FILE,
    )


def servers_409(ip: str) -> HubdError:
    """The client library's exception for hubd's own 409 `ip_in_use` answer."""
    refusal = admission.ip_in_use(ip)
    body = json.dumps({"error": refusal.code, "message": refusal.message})
    return error_from_response(refusal.status, body)


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    # argparse wraps to the terminal width: compare with the line breaks undone.
    return " ".join(capsys.readouterr().out.split())


# -- --help --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["stats", "--help"], ["subscribe", "--help"]])
def test_help_names_the_default_url_and_the_lookup_order(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = help_text(argv, capsys)
    assert f"hubd base URL (default {DEFAULT_URL}, what `make run` serves)" in out
    assert "the first of: --url, $HUBD_URL, url in the config file, the default" in out
    assert "There is no default credential." in out


@pytest.mark.parametrize("argv", [["--help"], ["subscribe", "--help"], ["whoami", "--help"]])
def test_help_shows_source_address_and_why(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = help_text(argv, capsys)
    assert "--source-address ADDR connect from this local IP address, e.g. 127.0.0.2" in out
    assert "hubd allows one subscriber connection per client IP" in out
    assert "a second subscribe (or whoami) from this machine needs another address" in out


def test_source_address_must_be_an_ip_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--token", "t", "--source-address", "my-laptop", "subscribe", "pdfm"])
    assert info.value.code == 2
    assert "--source-address 'my-laptop' is not an IP address (e.g. 127.0.0.2)" in (
        capsys.readouterr().err
    )


# -- 409 ip_in_use -------------------------------------------------------------------------


def test_ip_in_use_says_what_it_means_and_what_to_do() -> None:
    exc = servers_409("127.0.0.1")
    assert isinstance(exc, ConflictError)
    message, code = explain(exc, settings(), command="subscribe")
    assert code == 2
    assert message.startswith(
        "hubd already has a subscriber connection from this machine's address "
        "(409 ip_in_use): client IP 127.0.0.1 already has an open connection"
    )
    assert "whoami opens such a connection too" in message
    assert "Close the other one (another hubctl subscribe?)" in message
    assert "connect from another address with --source-address 127.0.0.2" in message
    assert "ask whoever runs hubd about limits.one_connection_per_ip" in message


@pytest.mark.parametrize(
    ("url", "source", "suggested"),
    [
        ("http://127.0.0.1:8080", None, "127.0.0.2"),
        ("http://localhost:8080", None, "127.0.0.2"),
        ("http://127.0.0.1:8080", "127.0.0.2", "127.0.0.3"),
        ("http://127.0.0.1:8080", "127.0.0.255", "127.0.1.0"),
        ("http://127.0.0.1:8080", "127.255.255.255", "127.0.0.2"),
        ("http://127.0.0.1:8080", "::1", "127.0.0.2"),
        ("http://[::1]:8080", None, None),
        ("https://hubd.example.com", None, None),
        ("http://10.1.2.3:8080", "10.1.2.4", None),
    ],
)
def test_another_source_address_on_loopback_only(
    url: str, source: str | None, suggested: str | None
) -> None:
    assert another_source_address(url, source) == suggested


def test_ip_in_use_from_a_remote_server_suggests_no_loopback_address() -> None:
    message, _ = explain(servers_409("203.0.113.9"), settings("https://hubd.example.com"))
    assert "127.0.0.2" not in message
    assert "--source-address and another of this machine's addresses" in message
    assert "limits.one_connection_per_ip" in message


def test_ip_in_use_after_source_address_suggests_the_next_one() -> None:
    exc = servers_409("127.0.0.2")
    message, _ = explain(exc, settings(), source_address="127.0.0.2")
    assert "--source-address 127.0.0.3" in message


def test_other_conflicts_are_not_called_ip_in_use() -> None:
    exc = ConflictError(409, "not_subscribed", "client x is not subscribed to pdfm")
    message, code = explain(exc, settings(), command="publish")
    assert message == "the server refused (409 not_subscribed): client x is not subscribed to pdfm"
    assert code == 2


# -- unreachable ---------------------------------------------------------------------------


def test_unreachable_default_url_says_it_is_the_default() -> None:
    exc = NetworkError(f"cannot reach {DEFAULT_URL}: Connection refused")
    message, code = explain(exc, settings(DEFAULT_URL, url_source=DEFAULT_URL_SOURCE))
    assert code == 1
    assert message == (
        f"cannot reach {DEFAULT_URL}: Connection refused ({DEFAULT_URL} is hubctl's default "
        f"URL, as no --url, HUBD_URL or url in {FILE} says otherwise: start hubd there with "
        "`make run`, or say where yours is)"
    )


def test_unreachable_configured_url_is_said_as_it_is() -> None:
    exc = NetworkError(f"cannot reach {DEFAULT_URL}: Connection refused")
    assert explain(exc, settings(DEFAULT_URL))[0] == str(exc)


def test_a_source_address_this_machine_lacks_is_named() -> None:
    exc = NetworkError(f"cannot connect to {DEFAULT_URL}: Cannot assign requested address")
    message, _ = explain(exc, settings(), source_address="10.9.9.9")
    assert message.endswith("(--source-address 10.9.9.9 is not an address of this machine)")
    message, _ = explain(exc, settings(), source_address="127.0.0.2")
    assert "on macOS add it first: sudo ifconfig lo0 alias 127.0.0.2" in message


# -- refused credentials on the development server -----------------------------------------


@pytest.mark.parametrize(
    ("command", "used", "hint"),
    [
        ("subscribe", Credentials(api_key="dev-publisher-key"), "--token dev-subscriber-token"),
        ("publish", Credentials(token="dev-subscriber-token"), "--api-key dev-publisher-key"),
        ("stats", Credentials(token="dev-subscriber-token"), "--token dev-admin-token"),
    ],
)
def test_a_forbidden_credential_on_the_dev_server_names_the_right_one(
    command: str, used: Credentials, hint: str
) -> None:
    exc = ForbiddenError(403, "forbidden", "principal lacks the role")
    message, code = explain(exc, settings(credentials=used), command=command)
    assert code == 2
    assert message.endswith(
        f"(403 forbidden): principal lacks the role. For `make run`'s development server: "
        f"{hint} (public, from config/hubd.dev.toml)"
    )


def test_dev_hints_only_for_the_dev_server_and_only_when_they_differ() -> None:
    refused = AuthError(401, "unauthorized", "the bearer token presented is not valid")
    elsewhere, _ = explain(refused, settings("https://hubd.example.com"), command="stats")
    assert "dev-" not in elsewhere
    same = settings(credentials=Credentials(token="dev-admin-token"))
    assert "dev-" not in explain(refused, same, command="stats")[0]
    other, _ = explain(refused, settings(), command="stats")
    assert "--token dev-admin-token (public, from config/hubd.dev.toml)" in other

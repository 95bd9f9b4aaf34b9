"""Configuration: defaults, and every refusal naming the key by its path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hubd.settings import ConfigError, load_settings, load_settings_text, parse_listen

from .conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
HEX64 = "ab" * 32


def refused(text: str, *, credentials: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        make_settings(text, credentials=credentials)
    return str(info.value)


# -- defaults ------------------------------------------------------------------------------


def test_defaults_match_the_issue() -> None:
    s = make_settings()
    assert s.server.listen == ["127.0.0.1:8080"]
    assert s.server.shutdown_timeout == 10.0
    assert s.hub.channels == []
    assert s.hub.idle_timeout == 60.0
    assert s.hub.queue_size == 2048
    assert s.hub.slow_consumer == "drop_oldest"
    assert s.hub.max_message_bytes == 65536
    assert s.hub.max_publish_bytes == 1048576
    assert s.limits.one_connection_per_ip is True
    assert s.limits.trusted_proxies == []
    assert s.limits.max_connections == 10000


def test_builtin_channels_plus_extra_ones() -> None:
    s = make_settings('[hub]\nchannels = ["backups", "net.v2"]\n')
    assert s.hub.all_channels == {
        "global",
        "pdfm",
        "orchestrator",
        "health",
        "system",
        "backups",
        "net.v2",
    }


def test_a_full_valid_config_is_read() -> None:
    s = make_settings(
        """
        [server]
        listen = ["0.0.0.0:9000", "[::1]:9001"]
        shutdown_timeout = 2.5
        [hub]
        idle_timeout = 30
        queue_size = 16
        slow_consumer = "disconnect"
        max_message_bytes = 1024
        max_publish_bytes = 4096
        [limits]
        one_connection_per_ip = false
        trusted_proxies = ["10.0.0.0/8", "::1"]
        max_connections = 5
        """
    )
    assert s.server.listen == ["0.0.0.0:9000", "[::1]:9001"]
    assert s.server.shutdown_timeout == 2.5
    assert s.hub.idle_timeout == 30.0
    assert (s.hub.queue_size, s.hub.slow_consumer) == (16, "disconnect")
    assert (s.hub.max_message_bytes, s.hub.max_publish_bytes) == (1024, 4096)
    assert s.limits.one_connection_per_ip is False
    assert [str(n) for n in s.limits.trusted_networks] == ["10.0.0.0/8", "::1/128"]
    assert s.limits.max_connections == 5


# -- unknown keys and sections -------------------------------------------------------------


def test_unknown_key_is_named_with_its_section() -> None:
    assert refused("[hub]\nidle_timout = 3\n") == "unknown key 'idle_timout' in [hub]"


def test_unknown_key_in_a_credential_names_the_entry() -> None:
    msg = refused(
        '[[auth.tokens]]\nname = "a"\ntoken = "t"\nroles = ["admin"]\ncolour = 1\n',
        credentials=False,
    )
    assert msg == "unknown key 'colour' in [auth.tokens[0]]"


@pytest.mark.parametrize("text", ["[bogus]\n", "bogus = 1\n"])
def test_unknown_section_is_refused_listing_the_known_ones(text: str) -> None:
    msg = refused(text)
    assert msg.startswith("unknown section [bogus]")
    for section in ("[server]", "[hub]", "[limits]", "[auth]", "[log]"):
        assert section in msg


def test_missing_required_key_is_named() -> None:
    msg = refused('[[auth.tokens]]\ntoken = "t"\nroles = ["admin"]\n', credentials=False)
    assert msg == "missing key 'name' in [auth.tokens[0]]"


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings_text("[hub\n")


# -- bounds, types, enums ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hub]\nqueue_size = 0\n", "hub.queue_size must be >= 1, got 0"),
        ("[hub]\nmax_message_bytes = 0\n", "hub.max_message_bytes must be >= 1, got 0"),
        ("[hub]\nmax_publish_bytes = -5\n", "hub.max_publish_bytes must be >= 1, got -5"),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections must be >= 1, got 0"),
        ("[hub]\nidle_timeout = 0\n", "hub.idle_timeout must be > 0"),
        ("[server]\nshutdown_timeout = -1\n", "server.shutdown_timeout must be > 0"),
    ],
)
def test_out_of_range_values_name_the_key(text: str, message: str) -> None:
    assert refused(text).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[hub]\nqueue_size = "big"\n', "hub.queue_size must be an integer, got 'big'"),
        ("[hub]\nqueue_size = true\n", "hub.queue_size must be an integer, got true"),
        ("[hub]\nmax_message_bytes = 1.5\n", "hub.max_message_bytes must be an integer, got 1.5"),
        ('[hub]\nidle_timeout = "soon"\n', "hub.idle_timeout must be a number, got 'soon'"),
        (
            '[limits]\none_connection_per_ip = "yes"\n',
            "limits.one_connection_per_ip must be true or false, got 'yes'",
        ),
        ('[server]\nlisten = "127.0.0.1:1"\n', "server.listen must be an array"),
        ('[hub]\nchannels = "backups"\n', "hub.channels must be an array"),
        ("hub = 3\n", "hub must be a table"),
    ],
)
def test_wrong_types_name_the_key(text: str, message: str) -> None:
    assert refused(text).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[hub]\nslow_consumer = "block"\n',
            "hub.slow_consumer has 'block', which is not allowed; "
            "use one of 'drop_oldest', 'disconnect'",
        ),
        ('[log]\nlevel = "loud"\n', "log.level has 'loud', which is not allowed"),
    ],
)
def test_bad_enum_values_name_the_key_and_the_choices(text: str, message: str) -> None:
    assert refused(text).startswith(message)


def test_bad_role_names_the_key_and_the_roles() -> None:
    msg = refused('[[auth.tokens]]\nname = "a"\ntoken = "t"\nroles = ["root"]\n', credentials=False)
    assert msg == (
        "auth.tokens[0].roles[0] has 'root', which is not allowed; "
        "use one of 'subscriber', 'publisher', 'admin'"
    )


# -- listen addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:0", ("::", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_listen_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


def test_ipv6_listen_address_is_accepted_in_a_config() -> None:
    assert make_settings('[server]\nlisten = ["[::1]:8080"]\n').server.listen == ["[::1]:8080"]


@pytest.mark.parametrize(
    "value", ["localhost", "127.0.0.1", ":8080", "::1:8080", "[nothost]:80", "1.2.3.4:65536"]
)
def test_bad_listen_addresses_name_the_index(value: str) -> None:
    msg = refused(f'[server]\nlisten = ["127.0.0.1:1", "{value}"]\n')
    assert msg.startswith("server.listen[1]: ")
    assert repr(value) in msg


def test_empty_listen_list_is_refused() -> None:
    assert refused("[server]\nlisten = []\n").startswith("server.listen must name at least one")


def test_duplicate_listen_address_is_refused() -> None:
    msg = refused('[server]\nlisten = ["127.0.0.1:1", "127.0.0.1:1"]\n')
    assert msg.startswith("server.listen lists '127.0.0.1:1' twice")


# -- channels and trusted proxies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["pdfm"]', "hub.channels[0] is built-in channel 'pdfm'"),
        ('["ok", "Bad!"]', "hub.channels[1] is 'Bad!', which is not a valid channel name"),
        ('["dup", "dup"]', "hub.channels lists 'dup' twice"),
    ],
)
def test_bad_extra_channels_are_refused(value: str, message: str) -> None:
    assert refused(f"[hub]\nchannels = {value}\n").startswith(message)


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1", "10.1.2.3/8"])
def test_trusted_proxies_accept_networks_and_addresses(cidr: str) -> None:
    s = make_settings(f'[limits]\ntrusted_proxies = ["{cidr}"]\n')
    assert s.limits.trusted_proxies == [cidr]
    assert len(s.limits.trusted_networks) == 1


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "proxy.local", "10.0.0", ""])
def test_bad_trusted_proxy_is_named_by_index(cidr: str) -> None:
    msg = refused(f'[limits]\ntrusted_proxies = ["127.0.0.1", "{cidr}"]\n')
    assert msg.startswith(f"limits.trusted_proxies[1] is {cidr!r}, which is not an IP network")


# -- credentials ---------------------------------------------------------------------------


def token_entry(name: str = "a", secret: str = 'token = "t"', extra: str = "") -> str:
    return f'[[auth.tokens]]\nname = "{name}"\n{secret}\nroles = ["admin"]\n{extra}'


def test_no_credentials_at_all_is_refused() -> None:
    msg = refused("", credentials=False)
    assert msg.startswith("no credentials configured")
    assert "[[auth.tokens]]" in msg and "[[auth.api_keys]]" in msg


def test_empty_credential_lists_are_refused_too() -> None:
    assert refused("[auth]\ntokens = []\napi_keys = []\n", credentials=False).startswith(
        "no credentials configured"
    )


def test_an_api_key_alone_is_enough() -> None:
    s = make_settings(
        '[[auth.api_keys]]\nname = "m"\nkey = "k"\nroles = ["publisher"]\n', credentials=False
    )
    assert [k.name for k in s.auth.api_keys] == ["m"]
    assert s.auth.tokens == []


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "auth.tokens[0] must set exactly one of 'token' or 'token_sha256'"),
        (
            f'token = "t"\ntoken_sha256 = "{HEX64}"',
            "auth.tokens[0] must set exactly one of 'token' or 'token_sha256'",
        ),
        ('token = ""', "auth.tokens[0].token must not be empty"),
        (f'token_sha256 = "{HEX64[:-1]}"', "auth.tokens[0].token_sha256 must be 64 lowercase hex"),
        (f'token_sha256 = "{HEX64}0"', "auth.tokens[0].token_sha256 must be 64 lowercase hex"),
        (
            f'token_sha256 = "{"zz" * 32}"',
            "auth.tokens[0].token_sha256 must be 64 lowercase hex",
        ),
    ],
)
def test_token_secret_rules(secret: str, message: str) -> None:
    assert refused(token_entry(secret=secret), credentials=False).startswith(message)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "auth.api_keys[0] must set exactly one of 'key' or 'key_sha256'"),
        (
            f'key = "k"\nkey_sha256 = "{HEX64}"',
            "auth.api_keys[0] must set exactly one of 'key' or 'key_sha256'",
        ),
        (f'key_sha256 = "{HEX64[:10]}"', "auth.api_keys[0].key_sha256 must be 64 lowercase hex"),
    ],
)
def test_api_key_secret_rules(secret: str, message: str) -> None:
    text = f'[[auth.api_keys]]\nname = "m"\n{secret}\nroles = ["publisher"]\n'
    assert refused(text, credentials=False).startswith(message)


def test_token_sha256_is_accepted() -> None:
    s = make_settings(token_entry(secret=f'token_sha256 = "{HEX64}"'), credentials=False)
    assert s.auth.tokens[0].digest == bytes.fromhex(HEX64)


def test_empty_name_is_refused() -> None:
    msg = refused(token_entry(name=""), credentials=False)
    assert msg.startswith("auth.tokens[0].name must not be empty")


def test_empty_roles_is_refused() -> None:
    msg = refused('[[auth.tokens]]\nname = "a"\ntoken = "t"\nroles = []\n', credentials=False)
    assert msg.startswith("auth.tokens[0].roles must list at least one of")


def test_allow_list_channels_must_exist() -> None:
    msg = refused(token_entry(extra='channels = ["pdfm", "nope"]\n'), credentials=False)
    assert msg.startswith("auth.tokens[0].channels[1] is 'nope', which is not a channel")
    assert "pdfm" in msg and "orchestrator" in msg


def test_allow_list_may_name_extra_channels() -> None:
    s = make_settings(
        '[hub]\nchannels = ["backups"]\n' + token_entry(extra='channels = ["backups"]\n'),
        credentials=False,
    )
    assert s.auth.tokens[0].channels == ["backups"]


def test_allow_list_duplicates_are_refused() -> None:
    text = '[[auth.api_keys]]\nname = "m"\nkey = "k"\nroles = ["publisher"]\n'
    msg = refused(text + 'channels = ["pdfm", "pdfm"]\n', credentials=False)
    assert msg.startswith("auth.api_keys[0].channels lists 'pdfm' twice")


def test_duplicate_plain_secrets_are_refused() -> None:
    text = token_entry("a", 'token = "same"') + token_entry("b", 'token = "same"')
    msg = refused(text, credentials=False)
    assert msg == "auth.tokens[1] uses the same secret as auth.tokens[0]; secrets must differ"


def test_duplicate_secret_as_plain_and_digest_is_refused() -> None:
    digest = hashlib.sha256(b"same").hexdigest()
    text = token_entry("a", 'token = "same"') + (
        f'[[auth.api_keys]]\nname = "m"\nkey_sha256 = "{digest}"\nroles = ["publisher"]\n'
    )
    msg = refused(text, credentials=False)
    assert msg.startswith("auth.api_keys[0] uses the same secret as auth.tokens[0]")


# -- files ---------------------------------------------------------------------------------


def test_load_settings_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_load_settings_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)


def test_load_settings_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hubd.toml"
    path.write_text(
        '[hub]\nqueue_size = 7\n[[auth.tokens]]\nname="a"\ntoken="t"\nroles=["admin"]\n'
    )
    assert load_settings(path).hub.queue_size == 7


def test_load_settings_names_the_bad_key_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hubd.toml"
    path.write_text("[hub]\nqueue_size = 0\n")
    with pytest.raises(ConfigError, match=r"^hub\.queue_size must be >= 1, got 0$"):
        load_settings(path)


@pytest.mark.parametrize("name", ["hubd.dev.toml", "hubd.toml"])
def test_shipped_configs_parse(name: str) -> None:
    settings = load_settings(REPO / "config" / name)
    assert settings.auth.tokens or settings.auth.api_keys


def test_summary_is_one_line_without_secrets() -> None:
    summary = make_settings('[hub]\nqueue_size = 16\nslow_consumer = "disconnect"\n').summary()
    assert "\n" not in summary
    assert "queue_size=16" in summary and "slow_consumer=disconnect" in summary
    assert "alice-token" not in summary


# -- server.reuse_port: what several processes on one port cannot share -------------------

SHARED = """
[server]
listen = ["0.0.0.0:8080"]
reuse_port = true
[backplane]
kind = "redis"
[metrics]
listen = "127.0.0.1:9188"
"""


def test_reuse_port_is_off_by_default_and_shown_in_the_summary_when_on() -> None:
    assert make_settings().server.reuse_port is False
    assert "reuse_port" not in make_settings().summary()
    on = make_settings(SHARED)
    assert on.server.reuse_port is True
    assert on.summary().startswith("listen=0.0.0.0:8080 reuse_port=on channels=")


def test_reuse_port_needs_the_redis_backplane() -> None:
    message = refused(SHARED.replace('kind = "redis"', 'kind = "memory"'))
    assert message.startswith('server.reuse_port = true needs backplane.kind = "redis": ')
    assert "never see each other's events" in message


def test_reuse_port_needs_a_metrics_listener_of_each_process() -> None:
    without = SHARED.replace('listen = "127.0.0.1:9188"', "")
    message = refused(without)
    assert message.startswith("server.reuse_port = true needs metrics.listen ")
    assert "--instance N" in message
    # No /metrics at all: nothing to scrape on the wrong process.
    assert make_settings(without + "enabled = false\n").metrics.enabled is False


def test_reuse_port_refuses_port_0() -> None:
    message = refused(SHARED.replace('["0.0.0.0:8080"]', '["0.0.0.0:8080", "[::]:0"]'))
    assert message.startswith("server.listen[1] is '[::]:0': with server.reuse_port = true ")


def test_reuse_port_must_be_a_boolean() -> None:
    assert refused('[server]\nreuse_port = "yes"\n').startswith(
        "server.reuse_port must be true or false, got 'yes'"
    )

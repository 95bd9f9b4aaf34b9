"""hubctl's settings: flags over environment over config file, looked up separately for
the URL and the credential; clear errors (exit 2) when something is missing or unusable;
secrets never in a message, a repr or `--help`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from hubd.client import Credentials
from hubd.client.endpoint import Endpoint
from hubd.hubctl import main
from hubd.hubctl.config import (
    DEFAULT_URL,
    DEV_ADMIN,
    DEV_CREDENTIAL,
    ConfigError,
    Settings,
    config_path,
    dev_credential_hint,
    load,
)

SECRET_FILE_TOKEN = "file-secret-token-1"
SECRET_ENV_TOKEN = "env-secret-token-2"
SECRET_FLAG_KEY = "flag-secret-key-3"
DEV_TOML = Path(__file__).parents[2] / "config" / "hubd.dev.toml"


def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "hubctl.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def settings(
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    api_key: str | None = None,
) -> Settings:
    return load(url=url, token=token, api_key=api_key, env=env or {}, home=tmp_path)


FULL_FILE = f'url = "http://file.example:8080"\ntoken = "{SECRET_FILE_TOKEN}"\n'


# -- precedence ----------------------------------------------------------------------------


def test_the_file_alone_is_enough(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path)})
    assert got.url == "http://file.example:8080"
    assert got.credentials == Credentials(token=SECRET_FILE_TOKEN)
    assert got.url_source == got.credential_source == str(path)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    env = {
        "HUBCTL_CONFIG": str(path),
        "HUBD_URL": "http://env.example:1",
        "HUBD_TOKEN": SECRET_ENV_TOKEN,
    }
    got = settings(tmp_path, env)
    assert got.url == "http://env.example:1"
    assert got.url_source == "HUBD_URL"
    assert got.credentials == Credentials(token=SECRET_ENV_TOKEN)
    assert got.credential_source == "HUBD_TOKEN"


def test_flags_override_environment_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    env = {
        "HUBCTL_CONFIG": str(path),
        "HUBD_URL": "http://env.example:1",
        "HUBD_TOKEN": SECRET_ENV_TOKEN,
    }
    got = settings(tmp_path, env, url="https://flag.example", api_key=SECRET_FLAG_KEY)
    assert got.url == "https://flag.example"
    assert got.url_source == "--url"
    # The credential is taken whole from one place: the flag's API key, not the
    # environment's token beside it.
    assert got.credentials == Credentials(api_key=SECRET_FLAG_KEY)
    assert got.credential_source == "--api-key"


def test_url_and_credential_are_looked_up_separately(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path), "HUBD_API_KEY": "k"})
    assert got.url == "http://file.example:8080"  # from the file
    assert got.credentials == Credentials(api_key="k")  # from the environment
    assert got.credential_source == "HUBD_API_KEY"


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path), "HUBD_URL": "", "HUBD_TOKEN": ""})
    assert got.url_source == got.credential_source == str(path)


def test_config_path_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert config_path({}, home) == home / ".config" / "hubd" / "hubctl.toml"
    assert config_path({"XDG_CONFIG_HOME": "/x"}, home) == Path("/x/hubd/hubctl.toml")
    env = {"XDG_CONFIG_HOME": "/x", "HUBCTL_CONFIG": "/y/h.toml"}
    assert config_path(env, home) == Path("/y/h.toml")


def test_default_file_is_under_the_home_directory(tmp_path: Path) -> None:
    default = tmp_path / ".config" / "hubd"
    default.mkdir(parents=True)
    write_config(default, FULL_FILE)
    assert settings(tmp_path).credentials == Credentials(token=SECRET_FILE_TOKEN)


def test_a_broken_file_is_not_read_when_flags_and_env_give_everything(tmp_path: Path) -> None:
    path = write_config(tmp_path, "this is = = not toml")
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path), "HUBD_TOKEN": "t"}, url="http://h:1")
    assert got.url == "http://h:1"


# -- missing or unusable settings ----------------------------------------------------------


def test_no_url_anywhere_means_make_runs_server(tmp_path: Path) -> None:
    got = settings(tmp_path, {"HUBD_TOKEN": SECRET_ENV_TOKEN})
    assert got.url == DEFAULT_URL == "http://127.0.0.1:8080"
    assert got.url_source == "the default" and got.default_url
    assert got.credential_source == "HUBD_TOKEN"


@pytest.mark.parametrize("where", ["flag", "env", "file"])
def test_a_configured_url_beats_the_default(tmp_path: Path, where: str) -> None:
    path = write_config(tmp_path, 'url = "http://file.example:1"\n')
    env = {"HUBCTL_CONFIG": str(path), "HUBD_TOKEN": "t"}
    if where == "env":
        env["HUBD_URL"] = "http://env.example:1"
    got = settings(tmp_path, env, url="http://flag.example:1" if where == "flag" else None)
    assert got.url == f"http://{where}.example:1"
    assert not got.default_url


def test_the_default_url_is_what_the_dev_config_serves() -> None:
    dev = tomllib.loads(DEV_TOML.read_text(encoding="utf-8"))
    assert Endpoint.parse(DEFAULT_URL).authority in dev["server"]["listen"]


def test_no_credential_is_made_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path)
    assert str(info.value).startswith("no credential")


def test_missing_credential_says_where_to_put_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBD_URL": "http://h:1"})
    message = str(info.value)
    assert "no credential" in message
    for where in ("--token", "--api-key", "HUBD_TOKEN", "HUBD_API_KEY", "api_key"):
        assert where in message
    assert "dev-" not in message  # not the development server: no development credential


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        ("subscribe", "--token dev-subscriber-token"),
        ("publish", "--api-key dev-publisher-key"),
        ("stats", "--token dev-admin-token"),
        ("clients", "--token dev-admin-token"),
        ("whoami", "--token dev-admin-token"),
        (None, "--token dev-admin-token"),
    ],
)
@pytest.mark.parametrize("url", [None, "http://127.0.0.1:8080", "http://localhost:8080/"])
def test_missing_credential_for_the_dev_server_names_its_credential(
    tmp_path: Path, command: str | None, hint: str, url: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        load(url=url, token=None, api_key=None, env={}, home=tmp_path, command=command)
    message = str(info.value)
    assert message.startswith("no credential: pass --token or --api-key")
    assert f"For `make run`'s development server: {hint} (public, from config/hubd.dev.toml)" in (
        message
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8080",
        "http://127.0.0.1:8081",
        "http://10.0.0.5:8080",
        "http://127.0.0.1:8080/hub",
    ],
)
def test_other_servers_get_no_development_credential(tmp_path: Path, url: str) -> None:
    assert dev_credential_hint(url, "subscribe") == ""
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBD_URL": url})
    assert "dev-" not in str(info.value)


def test_the_suggested_dev_credentials_are_the_dev_configs() -> None:
    """Each suggestion is a credential of config/hubd.dev.toml with the role the command
    needs (admin for the rest)."""
    dev = tomllib.loads(DEV_TOML.read_text(encoding="utf-8"))
    roles = {t["token"]: t["roles"] for t in dev["auth"]["tokens"]}
    roles |= {k["key"]: k["roles"] for k in dev["auth"]["api_keys"]}
    needed = {"subscribe": "subscriber", "publish": "publisher"}
    for command, credential in [*DEV_CREDENTIAL.items(), ("stats", DEV_ADMIN)]:
        secret = credential.token or credential.api_key
        assert secret is not None
        assert roles[secret] == [needed.get(command, "admin")]
        kind = "tokens" if credential.token else "api_keys"
        assert secret in [c.get("token") or c.get("key") for c in dev["auth"][kind]]


def test_token_and_api_key_from_one_place_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, url="http://h:1", token=SECRET_ENV_TOKEN, api_key=SECRET_FLAG_KEY)
    message = str(info.value)
    assert "both a token and an API key" in message
    assert SECRET_ENV_TOKEN not in message and SECRET_FLAG_KEY not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'url = "http://h:1"\ntoken = "{SECRET_FILE_TOKEN}"\ntokn = "x"\n', "unknown key 'tokn'"),
        (f'url = "http://h:1"\ntoken = "{SECRET_FILE_TOKEN}\n', "not valid TOML"),
        ('url = "http://h:1"\ntoken = 42\n', "token must be a string"),
    ],
)
def test_bad_file_errors_name_the_file_not_the_secret(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBCTL_CONFIG": str(path)})
    message = str(info.value)
    assert expected in message and str(path) in message
    assert SECRET_FILE_TOKEN not in message


def test_a_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBD_TOKEN": "t"}, url="http://user:hunter2@h:1")
    assert "user:password@" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h:1/hub?access_token=SECRET-QUERY", "http://h:1/hub"),
        ("https://h/#SECRET-QUERY", "https://h/"),
        ("ftp://h:21/x?access_token=SECRET-QUERY", "ftp://h:21/x"),
        ("http://?access_token=SECRET-QUERY", "http://"),
    ],
)
def test_a_url_with_a_query_is_refused_without_echoing_the_query(
    tmp_path: Path, url: str, shown: str
) -> None:
    with pytest.raises(ValueError) as direct:
        Endpoint.parse(url)
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBD_URL": url, "HUBD_TOKEN": "t"})
    for message in (str(direct.value), str(info.value)):
        assert "SECRET-QUERY" not in message
        assert f"{shown!r}" in message


def test_a_bad_url_is_named_with_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, {"HUBD_URL": "ftp://h", "HUBD_TOKEN": "t"})
    assert str(info.value).startswith("HUBD_URL: ")


def test_a_readable_by_others_file_with_a_secret_gets_a_warning(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE, mode=0o644)
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path)})
    assert len(got.warnings) == 1 and "chmod 600" in got.warnings[0]
    os.chmod(path, 0o600)
    assert settings(tmp_path, {"HUBCTL_CONFIG": str(path)}).warnings == ()


# -- secrets stay out of reprs, --help and error output ------------------------------------


def test_reprs_do_not_show_secrets(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL_FILE)
    got = settings(tmp_path, {"HUBCTL_CONFIG": str(path)})
    assert SECRET_FILE_TOKEN not in repr(got)
    assert SECRET_FLAG_KEY not in repr(Credentials(api_key=SECRET_FLAG_KEY))


def test_credentials_need_exactly_one_usable_secret() -> None:
    for bad in ({}, {"token": "a", "api_key": "b"}, {"token": " "}, {"api_key": "a\nb"}):
        with pytest.raises(ValueError) as info:
            Credentials(**bad)
        assert "a\nb" not in str(info.value)


def test_help_does_not_show_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUBD_TOKEN", SECRET_ENV_TOKEN)
    monkeypatch.setenv("HUBD_API_KEY", SECRET_FLAG_KEY)
    for argv in (["--help"], ["subscribe", "--help"], ["publish", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        out = capsys.readouterr()
        assert SECRET_ENV_TOKEN not in out.out + out.err
        assert SECRET_FLAG_KEY not in out.out + out.err
        assert "HUBD_TOKEN" in out.out  # where the setting comes from is documented


def test_missing_configuration_exits_2_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("HUBD_URL", "HUBD_TOKEN", "HUBD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HUBCTL_CONFIG", str(tmp_path / "absent.toml"))
    assert main(["stats"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hubctl: no credential")
    assert "--token dev-admin-token" in err  # the default URL is the development server's
    assert main(["--url", "http://127.0.0.1:9", "subscribe", "pdfm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hubctl: no credential") and "dev-" not in err
    assert main(["subscribe", "pdfm"]) == 2
    assert "--token dev-subscriber-token" in capsys.readouterr().err


def test_options_work_before_and_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both fail at the same later point (no credential), so both parsed --url.
    monkeypatch.setenv("HUBCTL_CONFIG", str(tmp_path / "absent.toml"))
    for name in ("HUBD_URL", "HUBD_TOKEN", "HUBD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--url", "http://127.0.0.1:9", "clients"]) == 2
    assert main(["clients", "--url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.count("no credential") == 2

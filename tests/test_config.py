"""Typed configuration (medaid.common.config): every option is validated at start; a bad value
stops the process with exit status 2 and a line naming the flag, the variable, the value and what
is accepted (no traceback); flags win over MEDAID_* variables, which win over *_FILE secrets; the
option tables of docs/configuration.md are those the services declare. And the gateway's two
profiles: open in development with a WARNING as its first log line, closed with TLS unless it has
a way to authenticate institutions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from medaid.common import config, config_doc
from medaid.common.redis_server import free_port
from medaid.gateway.__main__ import OPTIONS as GATEWAY
from medaid.registry.__main__ import OPTIONS as REGISTRY
from medaid.router.__main__ import OPTIONS as ROUTER
from medaid.topology import start_service

ROOT = Path(__file__).resolve().parents[1]
GW = ["--router", "127.0.0.1:7000"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calling shell's MEDAID_* options must not leak into these cases."""
    for opt in (*GATEWAY, *REGISTRY, *ROUTER):
        monkeypatch.delenv(opt.env, raising=False)
        monkeypatch.delenv(opt.env + "_FILE", raising=False)


def problems(options: tuple[config.Option, ...], argv: list[str]) -> list[str]:
    with pytest.raises(config.ConfigError) as err:
        config.load("test", options, argv)
    return err.value.problems


@pytest.mark.parametrize(("argv", "flag", "env", "accepted"), [
    (["--require-sign-in", "ture"], "--require-sign-in", "MEDAID_REQUIRE_SIGN_IN", "true/false, 1/0, yes/no, on/off"),
    (["--sign-ttl-s", "a day"], "--sign-ttl-s", "MEDAID_SIGN_TTL_S", "an integer ≥ 1"),
    (["--sign-ttl-s", "1.5"], "--sign-ttl-s", "MEDAID_SIGN_TTL_S", "an integer ≥ 1"),
    (["--port", "70000"], "--port", "MEDAID_PORT", "an integer from 0 to 65535"),
    (["--port", "-1"], "--port", "MEDAID_PORT", "an integer from 0 to 65535"),
    (["--sign-alg", "md5"], "--sign-alg", "MEDAID_SIGN_ALG", "one of hmac-sm3, hmac-sha256"),
    (["--credentials", "closed"], "--credentials", "MEDAID_CREDENTIALS", "one of auto, required, open"),
    (["--log-level", "LOUD"], "--log-level", "MEDAID_LOG_LEVEL", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    (["--clock", "start:yesterday"], "--clock", "MEDAID_CLOCK", "system, or start:<ISO 8601 instant>"),
    (["--deadline-s", "nan"], "--deadline-s", "MEDAID_DEADLINE_S", "a number ≥ 0.001"),
    (["--redis-timeout-ms", "0"], "--redis-timeout-ms", "MEDAID_REDIS_TIMEOUT_MS", "an integer ≥ 1"),
    (["--admdvs", "10000"], "--admdvs", "MEDAID_ADMDVS", "6 digits"),
    (["--redis-url", "127.0.0.1:6379"], "--redis-url", "MEDAID_REDIS_URL", "redis://"),
    (["--router", "router"], "--router", "MEDAID_ROUTER", "host:port"),
])
def test_a_bad_value_names_the_option_the_value_and_what_is_accepted(argv, flag, env, accepted):
    (line,) = problems(GATEWAY, [*GW, *argv])
    assert line.startswith(f"{flag} ({env}) = {argv[1]!r} is not valid"), line
    assert accepted in line, line


def test_a_bad_registry_list_and_a_bad_province(monkeypatch):
    monkeypatch.setenv("MEDAID_REGISTRIES", "13=127.0.0.1:1,1=127.0.0.1:2")
    registries, batch = problems(ROUTER, ["--batch", "maybe"])
    assert registries.startswith("--registries (MEDAID_REGISTRIES) = '13=127.0.0.1:1,1=127.0.0.1:2' is not valid: "
                                 "bad item '1=127.0.0.1:2'"), registries
    assert batch.startswith("--batch (MEDAID_BATCH) = 'maybe' is not valid"), batch
    assert problems(REGISTRY, ["--province", "130"])[0].startswith("--province (MEDAID_PROVINCE) = '130'")


def test_every_bad_option_is_reported_at_once_and_a_required_one_by_name():
    lines = problems(GATEWAY, ["--port", "x", "--require-sign-in", "ture"])
    assert [line.split(" ")[0] for line in lines] == ["--port", "--router", "--require-sign-in"], lines
    assert lines[1].startswith("--router (MEDAID_ROUTER) is required"), lines


def test_values_are_typed_and_booleans_take_only_the_documented_words(monkeypatch):
    cfg = config.load("gateway", GATEWAY, GW)
    assert (cfg["port"], cfg["require_sign_in"], cfg["deadline_s"], cfg["credentials"]) == (0, False, 10.0, "auto")
    assert type(cfg["port"]) is int and type(cfg["deadline_s"]) is float
    for word, value in (("TRUE", True), ("1", True), ("Yes", True), ("on", True),
                        ("false", False), ("0", False), ("NO", False), ("off", False)):
        assert config.load("gateway", GATEWAY, [*GW, "--require-sign-in", word])["require_sign_in"] is value
    for word in ("t", "y", "2", "ture", ""):
        monkeypatch.setenv("MEDAID_REQUIRE_SIGN_IN", word)
        if word:  # an empty variable counts as unset
            assert problems(GATEWAY, GW)[0].startswith("--require-sign-in"), word
        else:
            assert config.load("gateway", GATEWAY, GW)["require_sign_in"] is False


def test_flag_wins_over_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("MEDAID_PORT", "5001")
    monkeypatch.setenv("MEDAID_LOG_LEVEL", "debug")
    assert config.load("gateway", GATEWAY, GW)["port"] == 5001
    assert config.load("gateway", GATEWAY, GW)["log_level"] == "DEBUG"
    assert config.load("gateway", GATEWAY, [*GW, "--port", "5002"])["port"] == 5002
    monkeypatch.setenv("MEDAID_PORT", "99999")
    assert problems(GATEWAY, GW)[0].startswith("--port (MEDAID_PORT) = '99999'")


def test_secrets_come_from_a_file_and_are_never_printed(monkeypatch, tmp_path):
    key = tmp_path / "sign-key"
    key.write_text("s3cret-from-a-mounted-secret\n")
    monkeypatch.setenv("MEDAID_SIGN_KEY_FILE", str(key))
    cfg = config.load("gateway", GATEWAY, GW)
    assert cfg["sign_key"] == "s3cret-from-a-mounted-secret"
    assert "s3cret" not in repr(cfg)
    assert config.load("gateway", GATEWAY, [*GW, "--sign-key-file", str(key)])["sign_key"] == cfg["sign_key"]
    monkeypatch.setenv("MEDAID_SIGN_KEY", "another")
    assert "both set" in problems(GATEWAY, GW)[0]
    monkeypatch.delenv("MEDAID_SIGN_KEY")
    monkeypatch.setenv("MEDAID_SIGN_KEY_FILE", str(tmp_path / "absent"))
    assert problems(GATEWAY, GW)[0].startswith(f"sign_key file {tmp_path / 'absent'}:")


def test_the_type_comes_from_the_default_or_is_given():
    options = (config.Option("n", 3, "count"), config.Option("on", False, "switch"), config.Option("rate", 0.5, "r"),
               config.Option("name", "x", "text"), config.Option("p", 0, "port", config.PORT))
    assert [o.type for o in options] == [config.INT, config.BOOL, config.FLOAT, config.TEXT, config.PORT]
    cfg = config.load("test", options, ["--n", "7", "--on", "yes", "--rate", "2", "--p", "8080"])
    assert dict(cfg) == {"n": 7, "on": True, "rate": 2.0, "name": "x", "p": 8080}
    assert problems(options, ["--n", "-3"])[0] == "--n (MEDAID_N) = '-3' is not valid; accepted: an integer ≥ 0"


def test_configuration_page_lists_every_option():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert config_doc.rewrite(page) == page, "run: python -m medaid.common.config_doc docs/configuration.md"
    for opt in (*GATEWAY, *REGISTRY, *ROUTER):
        assert f"`{opt.env}`" in page


def test_configuration_page_says_which_shared_options_a_service_does_not_take():
    """The console reads only some of the options every other service takes (it keeps no state in a
    Redis of its own): the page must not promise it reads --redis-url and the store checks."""
    from medaid.console.__main__ import OPTIONS as CONSOLE

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    console_part = page.split("### console", 1)[1].split("<!-- options:end -->", 1)[0]
    taken = {o.name for o in CONSOLE}
    for opt in config.COMMON_OPTIONS:
        assert (f"`{opt.flag}`" in console_part) is (opt.name not in taken), opt.flag


def run(module: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=60,
                          env={**clean_process_env(), **(env or {})})


def clean_process_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MEDAID_") or k == "MEDAID_REDIS_SERVER"}


def test_a_service_with_bad_values_exits_2_without_a_traceback():
    done = run("medaid.gateway", "--router", "127.0.0.1:7000", "--port", "70000",
               env={"MEDAID_REQUIRE_SIGN_IN": "ture"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.splitlines() == [
        "medaid-gateway: invalid configuration: --port (MEDAID_PORT) = '70000' is not valid; accepted: an integer "
        "from 0 to 65535",
        "medaid-gateway: invalid configuration: --require-sign-in (MEDAID_REQUIRE_SIGN_IN) = 'ture' is not valid: "
        "not a boolean; accepted: true/false, 1/0, yes/no, on/off"]
    done = run("medaid.registry", "--recovery-interval-ms", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--recovery-interval-ms (MEDAID_RECOVERY_INTERVAL_MS) = '0' is not valid" in done.stderr


@pytest.mark.parametrize(("change", "problem"), [
    (('helper_selection = "LARGEST_BALANCE"', 'helper_selection = "LARGEST_BALANCES"'),
     "helper_selection must be one of ('LARGEST_BALANCE', 'FILING_ORDER')"),
    (("max_members = 8", "max_members = -1"), "max_members must be between 1 and 100"),
    (("max_members = 8", 'max_members = "8"'), "max_members must be a TOML int, not str '8'"),
    (('province = "13"', "[regions"), "not valid TOML"),
], ids=["misspelt_mode", "negative_cap", "quoted_number", "broken_toml"])
def test_a_registry_with_a_bad_policy_file_exits_2_naming_the_file(tmp_path, change, problem):
    """A province policy is configuration: a bad one stops the registry before it starts anything,
    with the file and what is wrong in one line, as a bad flag does (not a traceback)."""
    shipped = (ROOT / "deploy" / "policies" / "13-hebei.toml").read_text(encoding="utf-8")
    assert change[0] in shipped
    path = tmp_path / "13-hebei.toml"
    path.write_text(shipped.replace(*change), encoding="utf-8")
    done = run("medaid.registry", "--province", "13", "--policy-file", str(path),
               "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"medaid-registry: invalid configuration: policy file {path}: "), done.stderr
    assert problem in done.stderr


def test_a_registry_given_another_province_s_policy_exits_2():
    """--province 11 with 河北's file would serve 河北's rules and keys as registry-11: refused."""
    hebei = ROOT / "deploy" / "policies" / "13-hebei.toml"
    done = run("medaid.registry", "--province", "11", "--policy-file", str(hebei),
               "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (f"medaid-registry: invalid configuration: policy file {hebei}: it is the policy of "
                           "province 13, not of province 11\n")


def test_a_wallet_for_a_province_without_a_policy_file_exits_2():
    """The wallet reads each configured province's policy file (its 统筹区 are the use-places) at start."""
    done = run("medaid.wallet", "--registries", f"99=127.0.0.1:{free_port()}",
               "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("medaid-wallet: invalid configuration: no policy file for province 99"), \
        done.stderr


def test_a_wallet_with_a_bad_wallet_policy_exits_2_naming_the_file(tmp_path):
    path = tmp_path / "wallet.toml"
    path.write_text("max_transfer_fen = -1\n", encoding="utf-8")
    done = run("medaid.wallet", "--registries", f"13=127.0.0.1:{free_port()}", "--policy-file", str(path),
               "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (f"medaid-wallet: invalid configuration: policy file {path}: max_transfer_fen must be "
                           "a positive amount in fen\n")


@pytest.mark.parametrize(("argv", "problem"), [
    (["--tls-cert", "{tmp}/registry-13.crt"],
     "--tls-cert, --tls-key and --tls-ca (MEDAID_TLS_CERT, MEDAID_TLS_KEY, MEDAID_TLS_CA) go together; missing: "
     "--tls-key, --tls-ca"),
    (["--tls-dir", "{tmp}"], "--tls-dir (MEDAID_TLS_DIR) {tmp}: "),
    (["--redis-password-file", "{tmp}/absent"],
     "--redis-password-file (MEDAID_REDIS_PASSWORD_FILE) '{tmp}/absent' cannot be read: No such file or directory"),
    (["--redis-password-file", "{tmp}/empty"], "--redis-password-file (MEDAID_REDIS_PASSWORD_FILE) '{tmp}/empty' "
     "is empty"),
    (["--redis-url", "redis+cluster://127.0.0.1:{port}", "--redis-timeout-ms", "500"],
     "--redis-wait-timeout-ms (MEDAID_REDIS_WAIT_TIMEOUT_MS) 1000 must be below --redis-timeout-ms "
     "(MEDAID_REDIS_TIMEOUT_MS) 500"),
], ids=["tls_cert_alone", "tls_dir_without_files", "password_file_absent", "password_file_empty",
        "wait_timeout_above_timeout"])
def test_settings_unusable_together_exit_2_naming_the_options(tmp_path, argv, problem):
    """Options each well formed but unusable (a certificate without its key, a password file that cannot
    be read) are bad configuration like a bad value: exit status 2 and a line naming the flags and
    variables, no traceback."""
    (tmp_path / "empty").write_text("\n")
    port = free_port()
    argv = [a.format(tmp=tmp_path, port=port) for a in argv]
    done = run("medaid.registry", "--redis-url", f"redis://127.0.0.1:{port}/0", *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    assert done.stderr.splitlines()[-1].startswith(
        "medaid-registry: invalid configuration: " + problem.format(tmp=tmp_path)), done.stderr


def test_gateway_with_tls_and_no_way_to_authenticate_institutions_does_not_start(tmp_path):
    done = run("medaid.gateway", "--router", "127.0.0.1:7000", "--credentials", "required")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "neither --sign-key nor --institution-tokens is set" in done.stderr


def test_open_gateway_says_so_in_its_first_log_line():
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # never reached: no request is sent
    gw = start_service("gateway", "medaid.gateway", ["--router", "127.0.0.1:7000", "--redis-url", redis_url],
                       env={k: "" for k in ("MEDAID_TLS_DIR", "MEDAID_CREDENTIALS", "MEDAID_SIGN_KEY")})
    try:
        first = json.loads(gw.log_lines[0])
    finally:
        gw.stop()
    assert first["level"] == "warning" and "the gateway is open" in first["msg"], first
    for option in ("MEDAID_CREDENTIALS=required", "MEDAID_INSTITUTION_TOKENS", "MEDAID_SIGN_KEY"):
        assert option in first["msg"]


@pytest.mark.parametrize("module", ["medaid.router", "medaid.wallet", "medaid.console"])
def test_a_province_named_twice_in_registries_exits_2_naming_the_option(module, tmp_path):
    """`--registries '13=a,13=b'`: which one would serve 河北? The second silently replaced the first.
    Every service that reads the option refuses it at start, as any bad value of it."""
    spec = "13=127.0.0.1:7001,11=127.0.0.1:7003,13=127.0.0.1:7002"
    argv = ["--registries", spec]
    if module != "medaid.console":
        argv += ["--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    if module == "medaid.router":
        argv += ["--wallet", "127.0.0.1:7000"]
    if module == "medaid.console":
        operators = tmp_path / "operators.toml"
        operators.write_text((ROOT / "deploy" / "console" / "operators.toml").read_text(encoding="utf-8"))
        argv += ["--wallet", "127.0.0.1:7000", "--operators", str(operators)]
    done = run(module, *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"--registries (MEDAID_REGISTRIES) = {spec!r} is not valid: province 13 is named twice" in done.stderr, \
        done.stderr


def test_an_address_whose_port_is_no_port_exits_2_naming_the_option():
    """`--wallet 127.0.0.1:70000`: gRPC wraps such a port (70000 → 4464) and would call whatever listens
    there. A port outside 1..65535 is refused at start, like a missing one."""
    for address in ("127.0.0.1:70000", "127.0.0.1:0"):
        done = run("medaid.router", "--registries", "13=127.0.0.1:7001", "--wallet", address,
                   "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "--wallet" in done.stderr, done.stderr


@pytest.mark.parametrize(("module", "argv", "flags"), [
    ("medaid.registry", ["--host", "999.1.1.1"], "--host, --metrics-port (MEDAID_HOST, MEDAID_METRICS_PORT)"),
    ("medaid.registry", ["--port", "{taken}"], "--host, --port (MEDAID_HOST, MEDAID_PORT)"),
    ("medaid.registry", ["--metrics-port", "{taken}"], "--host, --metrics-port"),
    ("medaid.registry", ["--metrics-host", "127.0.0.1", "--metrics-port", "{taken}"], "--metrics-host, --metrics-port"),
    ("medaid.router", ["--port", "{taken}", "--registries", "13=127.0.0.1:7001"], "--host, --port"),
    ("medaid.gateway", ["--port", "{taken}", "--router", "127.0.0.1:7000"], "--host, --port"),
], ids=["host_unknown", "grpc_port_taken", "metrics_port_taken", "metrics_host_port_taken", "router_port_taken",
        "gateway_port_taken"])
def test_an_address_the_service_cannot_listen_on_exits_2_naming_the_options(module, argv, flags):
    """A listen address that cannot be had (a host that is no address of this machine, a port another
    process holds) is a setting unusable as given: exit status 2 and one line naming the options, no
    traceback; the OS's or gRPC's words stay in it (`make up` and the tests look for them)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        argv = [a.format(taken=holder.getsockname()[1]) for a in argv]
        done = run(module, "--redis-url", f"redis://127.0.0.1:{free_port()}/0", *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"medaid-{module.split('.')[1]}: invalid configuration: {flags}"), done.stderr
    assert any(w in last for w in ("Failed to bind to address", "Address already in use",
                                   "Name or service not known")), last


@pytest.mark.parametrize("endpoint", ["notaurl", "collector:4318", "grpc://collector:4317", "http://"])
def test_an_otlp_endpoint_that_is_no_http_url_exits_2_naming_the_option(endpoint):
    """`--otlp-endpoint` is an OTLP/HTTP URL: one without http(s):// and a host was taken at start and
    failed at every export afterwards (an error line per batch, no trace ever reached the collector)."""
    done = run("medaid.registry", "--metrics-port", "off", "--otlp-endpoint", endpoint,
               "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(
        f"medaid-registry: invalid configuration: --otlp-endpoint (MEDAID_OTLP_ENDPOINT) = {endpoint!r} is not "
        "valid"), done.stderr

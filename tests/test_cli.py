"""The operator CLI: one argument order, relations spelled out, complete --json, valid test ids,
msgids no two runs share and a --help for every command that lists the allowed values."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from medaid import cli
from medaid.cli import base
from medaid.cli.testid import test_ids as make_test_ids
from medaid.common import msgid as msgids
from medaid.common.clock import SHANGHAI
from medaid.common.idempotency import REQUEST_ID_RE
from medaid.common.idnumber import parse
from medaid.common.logs import scrub
from medaid.common.v1 import common_pb2 as cpb
from support import bind, credit, dead_port, enroll, settle


def commands() -> dict[str, object]:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return dict(sub.choices)  # type: ignore[attr-defined]


def test_every_operator_action_has_a_command_with_help():
    names = set(commands())
    assert {"enroll", "person", "status", "credit", "account", "bind", "unbind", "bindings", "proxy", "proxies",
            "diagnose", "records", "settlement", "open-wallet", "wallet", "wallet-entries", "transfer", "accept",
            "transfers-in", "transfers-out", "transfer-status", "premium", "clearing", "maintenance", "lookup",
            "presettle", "settle", "reverse", "health", "testid"} <= names
    def help_of(name: str) -> str:
        return " ".join(commands()[name].format_help().split())  # type: ignore[attr-defined]

    for name, parser in commands().items():
        assert parser.description, name  # type: ignore[attr-defined]
    for name in ("bind", "proxy", "transfer", "open-wallet"):
        assert "SPOUSE | PARENT | CHILD | SIBLING" in help_of(name), name
    assert "OUTPATIENT | INPATIENT | PHARMACY" in help_of("settle")
    assert "EMPLOYEE | FLEXIBLE | RESIDENT" in help_of("enroll")
    assert "ACTIVE | SUSPENDED | TERMINATED" in help_of("status")
    assert "MEMBER is HELPER's RELATION" in help_of("bind")
    assert "RECIPIENT is SENDER's RELATION" in help_of("transfer")


def test_two_person_commands_name_the_giving_side_first():
    p = cli.build_parser()
    h, m = "130102198001010010", "130102201506010029"
    for cmd in ("bind", "unbind", "diagnose"):
        extra = ["CHILD"] if cmd == "bind" else []
        a = p.parse_args([cmd, h, m, *extra])
        assert (a.helper, a.member) == (h, m), cmd
    a = p.parse_args(["transfer", h, m, "PARENT", "1.00", "--face", "F"])
    assert (a.sender, a.recipient) == (h, m)
    a = p.parse_args(["proxy", h, m, "PARENT"])
    assert (a.holder, a.relative) == (h, m)
    # The person comes before the id of what is done to them.
    assert p.parse_args(["accept", m, "T1"]).transfer_id == "T1"
    assert (p.parse_args(["transfers-in", m, "--limit", "5"]).recipient, p.parse_args(
        ["transfers-in", m, "--limit", "5"]).limit) == (m, 5)
    assert (p.parse_args(["transfers-out", h]).sender, p.parse_args(["transfers-out", h]).limit) == (h, 0)
    assert p.parse_args(["reverse", m, "S1"]).setl_id == "S1"
    assert p.parse_args(["records", m, "--month", "2026-11"]).month == "2026-11"
    assert p.parse_args(["records", m]).month is None
    with pytest.raises(SystemExit):
        p.parse_args(["records", m, "--month", "2026-13"])
    assert cli.__doc__ is not None and "`bind H M CHILD` says M is H's child" in cli.__doc__
    # A verification is never invented: a transfer without --face is a usage error.
    with pytest.raises(SystemExit):
        p.parse_args(["transfer", h, m, "PARENT", "1.00"])


def test_testid_makes_valid_id_numbers_of_the_asked_sex_and_birth(capsys):
    ids = make_test_ids("130100", "1980-01-01", "F", count=3)
    assert len(set(ids)) == 3
    for pid in ids:
        facts = parse(pid)
        assert facts.sex == "F" and facts.birth_date == dt.date(1980, 1, 1) and facts.division == "130100"
    assert parse(make_test_ids("620102", "2015-06-01", "M")[0]).sex == "M"
    assert cli.main(["testid", "--region", "130100", "--born", "1980-01-01", "--sex", "F"]) == 0
    assert capsys.readouterr().out.strip() == ids[0]
    assert cli.main(["testid", "--region", "999999", "--born", "1980-01-01", "--sex", "F"]) == 2
    assert "region" in capsys.readouterr().err


def test_an_unknown_relation_is_a_usage_error_on_every_command_that_names_one(capsys):
    """family-invite and premium-pay name a relation like bind: an unknown one is told with the
    allowed values, before any call is made."""
    one, two = make_test_ids("350203", "1980-01-01", "M")[0], make_test_ids("350203", "2015-01-01", "F")[0]
    for command in (["bind", one, two, "cousin"], ["family-invite", "FA350000000001", one, two, "cousin"],
                    ["premium-pay", one, two, "cousin", "2027"]):
        assert cli.main(["--registry", "35=127.0.0.1:1", *command]) == 2
        assert capsys.readouterr().err.startswith("error: 'cousin' is not one of SPOUSE, PARENT, CHILD")


def test_shanghai_time_is_beijing_time_whatever_the_machine_zone():
    instant = dt.datetime(2026, 11, 22, 17, 30, 5, tzinfo=dt.UTC)  # 01:30:05 the next day in Beijing
    assert base.shanghai_time(int(instant.timestamp() * 1000)) == "2026-11-23 01:30:05"


_ONE_RUN = """
import argparse, datetime as dt
from medaid.cli import base
from medaid.common import msgid as msgids
from medaid.common.clock import SHANGHAI
from medaid.common.idempotency import REQUEST_ID_RE
base.shanghai_now = lambda: dt.datetime(2026, 11, 22, 9, 30, 5, 123456, tzinfo=SHANGHAI)
print(base.new_msgid("H13010100001"), base.request_id(argparse.Namespace(request_id="", command="credit")))
"""


def test_two_cli_runs_at_the_same_clock_reading_never_share_an_id():
    """Two CLI runs started in the same clock tick, or on a machine whose clock was set back, read the
    same time: each run (its own process) still sends its own msgid and request id, which the services
    accept (30 characters of [0-9A-Za-z]; REQUEST_ID_RE), and which no log masks as an id number."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.run([sys.executable, "-c", _ONE_RUN], env=env, capture_output=True, text=True, check=True)
            .stdout.split() for _ in range(3)]
    assert len({r[0] for r in runs}) == 3 and len({r[1] for r in runs}) == 3, runs
    for msgid, rid in runs:
        assert msgids.valid(msgid) and msgid.startswith("H13010100001"), msgid
        assert REQUEST_ID_RE.match(rid) and rid.startswith("cli-credit-20261122093005-"), rid
        assert scrub(f"{msgid} {rid}") == f"{msgid} {rid}"


def test_the_desk_lists_a_recipients_transfers_and_accepts_the_pending_one(national, tmp_path: Path, capsys):
    reg = f"11=127.0.0.1:{national.registries['11'].port}"
    args = ["--topology", str(tmp_path / "none.json"), "--registry", reg,
            "--wallet", f"127.0.0.1:{national.wallet.port}"]
    son, mother = make_test_ids("110105", "1980-01-01", "M")[0], make_test_ids("110105", "1950-01-01", "F")[0]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", son, "王强", "EMPLOYEE", "110000")
    run("enroll", mother, "李兰", "RESIDENT", "110000")
    run("credit", son, "500.00")
    for who in (son, mother):
        run("open-wallet", who, "110000", "--face", "FACE-OK-1")
    assert run("transfers-in", mother).strip() == f"no transfers to {mother}"
    assert run("transfers-out", son).strip() == f"no transfers from {son}"
    tid = json.loads(run("--json", "transfer", son, mother, "PARENT", "120.00", "--face", "FACE-OK-2"))[
        "transfer"]["transfer_id"]
    listed = run("transfers-in", mother)
    assert tid in listed and "PENDING_ACCEPT, accept before" in listed
    assert "wallet balance ¥120.00" in run("accept", mother, tid)
    assert run("transfers-in", mother).strip().endswith(": COMPLETED")
    sent = run("transfers-out", son)
    assert tid in sent and sent.strip().endswith(": COMPLETED")


def test_json_prints_zero_fields_and_text_spells_out_relations(national, tmp_path: Path, capsys):
    reg = f"13=127.0.0.1:{national.registries['13'].port}"
    args = ["--topology", str(tmp_path / "none.json"), "--registry", reg]
    helper, member = make_test_ids("130102", "1980-01-01", "M")[0], make_test_ids("130102", "2015-06-01", "F")[0]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", member, "张小妹", "RESIDENT", "130100")
    person = json.loads(run("--json", "person", member))["person"]
    # Zero-valued fields are present: a resident has no account, balance 0, tier 0.
    assert person["has_personal_account"] is False and person["balance_fen"] == "0"
    assert person["flexible_tier"] == 0 and person["moved_to_province"] == ""
    run("enroll", helper, "张三", "EMPLOYEE", "130100")
    assert run("bind", helper, member, "CHILD").strip() == (
        f"bound: member {member} is the CHILD of helper {helper}")
    diag = json.loads(run("--json", "diagnose", helper, member))
    assert diag["would_pay"] is False and diag["helper_balance_fen"] == "0"
    assert "HELPER_ZERO_BALANCE" in run("diagnose", helper, member)
    assert f"as member: member {member} is the CHILD of helper {helper}" in run("bindings", member)
    assert cli.main([*args, "--json", "bind", helper, "130102198001010029", "SPOUSE"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["code"] in ("NOT_FOUND", "FAILED_PRECONDITION") and err["reason"] and "metadata" in err


def test_amounts_are_read_by_the_one_rule_for_yuan() -> None:
    """The CLI, the console and the gateway read yuan by one rule (gateway/amounts.py): exact fen, at
    most two decimals, ASCII digits only; the CLI also takes fen written as '12850f'."""
    assert [base.parse_amount(t) for t in ("128.50", "128.5", "7", "12850f")] == [12_850, 12_850, 700, 12_850]
    for bad in ("1.234", "-1", "１２", "1e3", "", "12.f", "1,000"):
        with pytest.raises(base.UsageError):
            base.parse_amount(bad)


def test_a_call_without_an_answer_names_the_id_that_repeats_it(tmp_path: Path, capsys):
    """A generated request id is the only way to repeat a call safely: after no answer the CLI says it."""
    args = ["--topology", str(tmp_path / "none.json"), "--registry", f"13=127.0.0.1:{dead_port()}"]
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    assert cli.main([*args, "credit", pid, "1.00"]) == 1
    err = capsys.readouterr().err
    rid = re.search(r"repeat it with --request-id (cli-credit-[0-9]{14}-[a-z2-7]{16}) ", err)
    assert "UNAVAILABLE" in err and rid, err
    assert cli.main([*args, "--json", "--request-id", "r-1", "credit", pid, "1.00"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["resend"] == "--request-id r-1"
    assert cli.main([*args, "person", pid]) == 1  # a read has nothing to repeat
    assert "repeat it" not in capsys.readouterr().err


def test_a_family_account_is_created_only_with_the_signed_promise_named(capsys):
    """SPEC §3b: the creator signs the 承诺书; the CLI does not make one up."""
    creator = make_test_ids("620102", "1980-01-01", "M")[0]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["family-create", creator])
    assert "--promise" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["family-create", creator, "--promise", "P-1"]).promise == "P-1"


def test_the_cli_reference_lists_every_command_in_its_group():
    """docs/grpc-api.md's table of commands by service is the one `medaid --help` prints."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "grpc-api.md").read_text(encoding="utf-8")
    rows = {m.group(1): re.findall(r"`([a-z-]+)`", m.group(2))
            for m in re.finditer(r"^\| ([^|`]+?) \| (`[^|]+) \|$", page, re.M)}
    epilog = cli.build_parser().epilog or ""
    for line in epilog.splitlines()[1:]:
        title, _, names = line.strip().rpartition(": ")
        group = title.split(" (")[0]
        documented = next((v for k, v in rows.items() if k.split(" (")[0] == group), None)
        assert documented == names.split(", "), f"docs/grpc-api.md, the {group} row"


def test_the_rpc_reference_names_every_registry_and_router_rpc():
    """docs/grpc-api.md's RPC tables are the API an integrator calls: every RegistryService and
    RouterService method is in a row there, and every method a row names exists."""
    from medaid.registry.v1 import registry_pb2
    from medaid.router.v1 import router_pb2

    page = (Path(__file__).resolve().parents[1] / "docs" / "grpc-api.md").read_text(encoding="utf-8")
    for module, service, heading in ((registry_pb2, "RegistryService", "## Calling the registry"),
                                     (router_pb2, "RouterService", "## The router")):
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)
        documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Za-z]+)`", cell)}
        methods = set(module.DESCRIPTOR.services_by_name[service].methods_by_name)
        assert methods - documented == set(), f"docs/grpc-api.md lacks {service} rows"
        assert documented - methods == set(), f"docs/grpc-api.md names {service} methods that do not exist"


def test_diagnose_asks_the_helpers_registry_which_holds_the_binding(national, tmp_path: Path, capsys):
    """An id number's division code says where a person was born: a wife born in 北京 is insured and
    bound in 河北 with her husband. `diagnose HELPER MEMBER` asks the registry `bind` and `unbind` ask
    (the helper's), which holds the binding, not the one the member's birthplace names."""
    args = ["--topology", str(tmp_path / "none.json")]
    for prov in ("13", "11"):
        args += ["--registry", f"{prov}=127.0.0.1:{national.registries[prov].port}"]
    helper = make_test_ids("130102", "1980-01-01", "M")[0]
    wife = make_test_ids("110105", "1982-01-01", "F")[0]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", helper, "张三", "EMPLOYEE", "130100")
    run("enroll", wife, "李兰", "EMPLOYEE", "130100")
    run("credit", helper, "100.00")
    run("bind", helper, wife, "SPOUSE", "--face", "FACE-OK-1")
    diag = json.loads(run("--json", "diagnose", helper, wife))
    assert diag["would_pay"] is True and diag["binding_kind"] == "BINDING_KIND_MUTUAL_AID", diag
    assert diag["findings"] == [] and diag["helper_balance_fen"] == "10000"


def test_a_bad_id_number_is_refused_with_the_registrys_reason_before_any_call(hebei, tmp_path: Path, capsys):
    """An empty, full-width, 300-character or wrongly checked id number, or one of no province, is
    refused by the CLI (exit 2, nothing sent) with the reason the registry gives for it — not sent to a
    registry picked from its first two characters, nor told to `make up` one."""
    from medaid.common.errors import error_info
    from medaid.registry.v1 import registry_pb2 as rpb

    dead = f"127.0.0.1:{dead_port()}"  # a call that went out would answer UNAVAILABLE (exit 1)
    bad_ids = ("", "１３０１０２１９８００１０１００１０", "1" * 300, "130102198001010011", "990102198001010010",
               "13010219800101001x")
    for bad in bad_ids:
        with pytest.raises(grpc.RpcError) as refused:
            hebei.stub.GetPerson(rpb.GetPersonRequest(id_number=bad), timeout=5)
        info = error_info(refused.value)
        assert info is not None and info.reason == "INVALID_ID_NUMBER"
        reason = refused.value.details().removeprefix("id_number: ")
        for command in (["person", bad], ["credit", bad, "1.00"], ["bind", "130102198001010010", bad, "CHILD"],
                        ["transfer", bad, "130102198001010010", "PARENT", "1.00", "--face", "F"],
                        ["settle", bad, "1.00"], ["family-transfer", "FA130000000001", bad, "1.00"]):
            argv = ["--topology", str(tmp_path / "none.json"), "--registry", f"13={dead}",
                    "--registry", f"99={dead}", "--registry", f"１３={dead}", "--wallet", dead, "--router", dead,
                    *command]
            with pytest.raises(SystemExit) as usage:
                cli.main(argv)
            err = capsys.readouterr().err
            assert usage.value.code == 2, (bad, command, err)
            assert "INVALID_ID_NUMBER" in err and reason in err, (bad, command, err)


def test_a_bad_address_topology_file_or_certificate_folder_is_a_usage_error(hebei, tmp_path: Path, capsys):
    """Connection settings the CLI cannot use are the caller's mistake: `error: …` and exit 2 (with
    --json too: exit 1 is a service's answer), never a Python traceback or a bare exit 1."""
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    good = ["--registry", f"13=127.0.0.1:{hebei.port}"]
    corrupt = tmp_path / "topology.json"
    corrupt.write_text("{not json")

    def exit_code(argv: list[str]) -> int:
        try:
            return cli.main(argv)
        except SystemExit as exc:  # what `python -m medaid.cli` would exit with
            return exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - a traceback is the defect
            return -1 if exc else 0

    none = ["--topology", str(tmp_path / "none.json")]
    for argv in ([*none, "--registry", "13", "person", pid],
                 [*none, "--registry", "=127.0.0.1:1", "--registry", "13", "person", pid],
                 [*none, "--router", "bad address", "lookup", pid],
                 [*none, "--registry", "13=127.0.0.1:70000", "person", pid],  # no port: gRPC would wrap it
                 [*none, "--registry", "13=127.0.0.1:0", "person", pid],
                 ["--topology", str(corrupt), *good, "person", pid],
                 [*none, *good, "--tls-dir", str(tmp_path / "no-certs"), "person", pid],
                 [*none, *good, "--json", "--tls-dir", str(tmp_path / "no-certs"), "person", pid]):
        code = exit_code(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: "), (argv, code, err)
    assert cli.main([*none, *good, "person", pid]) == 1  # the same settings, corrected, reach the registry
    assert "NOT_FOUND" in capsys.readouterr().err


def test_every_argument_of_the_family_commands_is_explained_in_its_help():
    """docs/grpc-api.md: `medaid <command> --help` lists its arguments and the allowed values: the
    family and 代缴 commands too (a relation's values, what an amount is written in, a year)."""
    family = ("family-create", "family-invite", "family-respond", "family-transfer", "family-withdraw",
              "family-leave", "family-remove", "family-dissolve", "family", "premium-pay", "premium-cancel",
              "premiums")
    for name in family:
        for action in commands()[name]._actions:  # type: ignore[attr-defined]
            if action.dest in ("help", "handler", "offline"):
                continue
            assert action.help, f"medaid {name}: {action.dest} has no help"

    def help_of(name: str) -> str:
        return " ".join(commands()[name].format_help().split())  # type: ignore[attr-defined]

    for name in ("family-invite", "premium-pay"):
        assert "SPOUSE | PARENT | CHILD | SIBLING" in help_of(name), name
    assert "MEMBER is CREATOR's RELATION" in help_of("family-invite")
    for name in ("family-transfer", "family-create"):
        assert "yuan" in help_of(name) and "12850f" in help_of(name), name


def test_an_answer_without_a_reason_prints_the_code_alone(tmp_path: Path, capsys):
    """docs/grpc-api.md: the first line is `no answer: CODE …` (or `refused: CODE REASON: …`); a
    failure with no ErrorInfo (nothing listening) has no reason, and the line holds no gap for it."""
    dead = f"127.0.0.1:{dead_port()}"
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    assert cli.main(["--topology", str(tmp_path / "none.json"), "--router", dead, "lookup", pid]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("no answer: UNAVAILABLE: "), first


def test_a_read_without_an_answer_names_no_id_to_repeat_it(tmp_path: Path, capsys):
    """1101, 2206 and the family and 代缴 listings change nothing: after no answer there is nothing that
    "may still take effect", so no msgid or request id is offered to repeat them (in text or --json)."""
    dead = f"127.0.0.1:{dead_port()}"
    args = ["--topology", str(tmp_path / "none.json"), "--registry", f"13={dead}", "--router", dead]
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    for command in (["lookup", pid], ["presettle", pid, "1.00"], ["family", pid], ["premiums", "--payer", pid]):
        assert cli.main([*args, *command]) == 1
        err = capsys.readouterr().err
        assert "UNAVAILABLE" in err and "repeat it" not in err and "take effect" not in err, (command, err)
        assert cli.main([*args, "--json", *command]) == 1
        assert "resend" not in json.loads(capsys.readouterr().out)["error"], command
    # A 2207 without an answer still names its msgid.
    assert cli.main([*args, "settle", pid, "1.00"]) == 1
    assert re.search(r"repeat it with --msgid H13010100001[A-Z2-7]{18} ", capsys.readouterr().err)


def test_a_call_that_got_no_answer_is_not_called_a_refusal(hebei, tmp_path: Path, capsys):
    """A registry that is down said no to nothing: the human output says "no answer", keeps exit 1 and
    the resend hint; a registry that did say no is still "refused"."""
    dead = ["--topology", str(tmp_path / "none.json"), "--registry", f"13=127.0.0.1:{dead_port()}"]
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    for command in (["credit", pid, "1.00"], ["person", pid]):
        assert cli.main([*dead, *command]) == 1
        err = capsys.readouterr().err
        assert err.startswith("no answer: UNAVAILABLE") and "refused:" not in err, (command, err)
    assert "repeat it with --request-id" in (cli.main([*dead, "credit", pid, "1.00"]), capsys.readouterr().err)[1]
    live = ["--topology", str(tmp_path / "none.json"), "--registry", f"13=127.0.0.1:{hebei.port}"]
    assert cli.main([*live, "person", pid]) == 1
    assert capsys.readouterr().err.startswith("refused: NOT_FOUND PERSON_NOT_FOUND")


def test_every_amount_the_cli_prints_is_written_by_the_one_formatter():
    """-150 fen is -¥1.50 (the sign before the currency sign, as zh-CN writes it) wherever the CLI, the
    console or the demo print it; the family commands used their own formatter, which wrote ¥-2.50."""
    from medaid import demo
    from medaid.cli import family_cmds
    from medaid.console import rules
    from medaid.registry.v1 import family_pb2 as fpb

    assert [base.yuan(f) for f in (-150, -5, 0, 5, 123_456, -123_456)] == [
        "-¥1.50", "-¥0.05", "¥0.00", "¥0.05", "¥1,234.56", "-¥1,234.56"]
    assert rules.yuan is base.yuan and demo.yuan is base.yuan
    account = fpb.FamilyAccount(family_id="FA13x", state="ACTIVE", creator_id_number="C", balance_fen=-150,
                                shares=[fpb.ContributorShare(id_number="C", share_fen=-150)],
                                history=[fpb.FamilyEvent(kind="SPENT", id_number="C", amount_fen=-150, ref="S1")])
    lines = family_cmds.describe(account)
    assert "balance -¥1.50" in lines[0] and "share of C: -¥1.50" in lines[1] and "SPENT C -¥1.50 S1" in lines[2]


def test_a_month_is_read_alike_by_every_command_that_takes_one(national, tmp_path: Path, capsys):
    """`records --month`, `credit --period` and `clearing MONTH` take one argument type: YYYY-MM (the
    documented form) or YYYYMM, each sent in the form its service takes; anything else is a usage error
    before any call."""
    p = cli.build_parser()
    pid = make_test_ids("130102", "1980-01-01", "M")[0]
    for typed in ("2026-11", "202611"):
        assert p.parse_args(["records", pid, "--month", typed]).month == "2026-11"
        assert p.parse_args(["credit", pid, "1.00", "--period", typed]).period == "2026-11"
        assert p.parse_args(["clearing", typed]).month == "2026-11"
    for bad in ("2026-13", "202613", "2026-1", "20261", "2026/11", "11-2026", ""):
        for argv in (["records", pid, "--month", bad], ["credit", pid, "1.00", "--period", bad], ["clearing", bad]):
            with pytest.raises(SystemExit):
                p.parse_args(argv)
    args = ["--topology", str(tmp_path / "none.json"), "--registry", f"13=127.0.0.1:{national.registries['13'].port}",
            "--wallet", f"127.0.0.1:{national.wallet.port}"]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", pid, "张三", "EMPLOYEE", "130100")
    for typed in ("2026-11", "202612"):
        assert "credited ¥1.00" in run("credit", pid, "1.00", "--period", typed)
        assert run("records", pid, "--month", typed).startswith(f"共济 consumption records of {pid} in 2026-1")
        assert run("clearing", typed).startswith("clearing 2026")
    assert json.loads(run("--json", "account", pid))["credited_total_fen"] == "200"


def test_records_longer_than_a_page_end_with_the_command_for_the_next_one(national, tmp_path: Path, capsys):
    he = national.reg("13")
    pid, helper = enroll(he, birth="19600101"), enroll(he, birth="19880101")
    credit(he, helper, 1_000)
    bind(he, helper, pid, relation=cpb.RELATION_PARENT)
    sids = [settle(he, pid, 300).settlement_id for _ in range(3)]
    args = ["--topology", str(tmp_path / "none.json"), "--registry", f"13=127.0.0.1:{national.registries['13'].port}"]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    first = run("records", pid, "--limit", "2")
    assert [s in first for s in sids] == [False, True, True], first
    token = first.splitlines()[-1].removeprefix("older records: the same command with --page-token ")
    rest = run("records", pid, "--limit", "2", "--page-token", token)
    assert sids[0] in rest and "--page-token" not in rest, rest


def test_wallet_listings_longer_than_a_page_end_with_the_command_for_the_next_one(national, tmp_path: Path,
                                                                                   capsys):
    """`wallet-entries`, `transfers-in` and `transfers-out` page as `records` does: a page that is not
    the last ends with the command for the next (--page-token), and the last one does not."""
    from medaid.wallet.v1 import wallet_pb2 as wpb
    from support import fund_wallet, rid
    w = national.wallet.stub
    son = enroll(national.reg("13"), birth="19880101")
    credit(national.reg("13"), son, 10_000)
    mother = enroll(national.reg("11"), region="110000", division="110105", birth="19550101")
    t = fund_wallet(w, son, mother, 500, sender_at=("13", "130100"), recipient_at=("11", "110000"))
    for _ in range(2):
        w.SpendWallet(wpb.SpendWalletRequest(request_id=rid("s"), owner_id_number=mother, amount_fen=1,
                                             category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="110000"))
    args = ["--topology", str(tmp_path / "none.json"), "--wallet", f"127.0.0.1:{national.wallet.port}"]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    first = run("wallet-entries", mother, "--limit", "2")
    assert "#3 " in first and "#2 " in first and "#1 " not in first, first
    token = first.splitlines()[-1].removeprefix("older entries: the same command with --page-token ")
    rest = run("wallet-entries", mother, "--limit", "2", "--page-token", token)
    assert "#1 " in rest and "--page-token" not in rest, rest
    for command, who in (("transfers-in", mother), ("transfers-out", son)):
        out = run(command, who, "--limit", "1")
        assert t.transfer_id in out and "--page-token" not in out, out


def test_premium_cancel_asks_the_payers_registry_after_the_payee_moved(national, redis_server, tmp_path: Path,
                                                                         capsys):
    """A 代缴 lives with the payer's money, in the payer's registry (SPEC §4b), and is cancelled there, as
    the console's 代缴 page does: `premium-cancel PAYER PAYEE YEAR` asks the payer's registry, so a payee
    who has moved to another province since is cancelled for, every fen back to the payer."""
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"redis_url": redis_server.url, "addresses": {
        f"registry-{p}": f"127.0.0.1:{national.registries[p].port}" for p in ("13", "11")}}))
    args = ["--topology", str(topology)]
    payer = make_test_ids("130102", "1980-01-01", "M")[0]
    child = make_test_ids("130102", "2010-01-01", "F")[0]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", payer, "张三", "EMPLOYEE", "130100")
    run("enroll", child, "张小", "RESIDENT", "130100")
    run("credit", payer, "1000.00")
    run("premium-pay", payer, child, "CHILD", "2027")
    paid = json.loads(run("--json", "account", payer))["balance_fen"]
    # The child moves to 北京 and is insured there now; the payment stays with the payer's registry.
    run("status", child, "TERMINATED", "--moved-to", "11")
    run("enroll", child, "张小", "RESIDENT", "110000")
    # Someone else in the payer's province, named as the payer, cancels nothing.
    other = make_test_ids("130102", "1979-01-01", "M")[0]
    run("enroll", other, "李四", "EMPLOYEE", "130100")
    assert cli.main([*args, "--json", "premium-cancel", other, child, "2027"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "NOT_THE_PAYER"
    assert json.loads(run("--json", "account", payer))["balance_fen"] == paid
    cancelled = json.loads(run("--json", "premium-cancel", payer, child, "2027"))["premium"]
    assert (cancelled["payer_id_number"], cancelled["state"]) == (payer, "CANCELLED")
    assert json.loads(run("--json", "account", payer))["balance_fen"] == "100000" != paid

def test_a_person_is_asked_of_the_registry_the_person_directory_names(national, redis_server, tmp_path: Path,
                                                                       capsys):
    """A wife born in 北京 (110105…) is insured in 河北: the CLI asks the registry the national person
    directory names for her (where the router sends her bills), not the one her id number's birthplace
    names, and says which registry answered; without a directory (none configured, or one that does not
    answer) it falls back to the birthplace; --province still wins."""
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"redis_url": redis_server.url, "addresses": {
        f"registry-{p}": f"127.0.0.1:{national.registries[p].port}" for p in ("13", "11")}}))
    args = ["--topology", str(topology)]
    husband = make_test_ids("130102", "1980-01-01", "M")[0]
    wife = make_test_ids("110105", "1982-01-01", "F")[0]

    def run(*a: str) -> str:
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    run("enroll", husband, "张三", "EMPLOYEE", "130100")
    run("enroll", wife, "李兰", "EMPLOYEE", "130100")
    said = f"asked registry 13, where the person directory says {wife} is insured (the id number's birthplace is 11)"
    out = run("person", wife)
    assert out.splitlines()[0].startswith(f"{wife} 李兰: EMPLOYEE ACTIVE in 130100") and said in out, out
    assert said in run("credit", wife, "10.00")
    assert "balance ¥10.00" in run("account", wife)
    run("bind", husband, wife, "SPOUSE", "--face", "FACE-OK-1")
    assert f"as member: member {wife} is the SPOUSE of helper {husband}" in run("bindings", wife)
    assert "asked registry" not in run("person", husband)  # insured where born: nothing to say
    assert cli.main([*args, "--json", "person", wife]) == 0
    out, err = capsys.readouterr()  # --json keeps stdout to the response alone
    assert json.loads(out)["person"]["pooling_region"] == "130100" and said in err, err
    # --province is asked as given.
    assert cli.main([*args, "person", wife, "--province", "11"]) == 1
    assert "PERSON_NOT_FOUND" in capsys.readouterr().err
    # A directory that does not answer: the birthplace's registry, and the CLI says why.
    down = [*args, "--directory", f"redis://127.0.0.1:{dead_port()}/0"]
    assert cli.main([*down, "person", wife]) == 1
    err = capsys.readouterr().err
    assert "PERSON_NOT_FOUND" in err and "person directory not reachable" in err and "registry 11" in err, err
    assert cli.main([*down, "person", husband]) == 0
    capsys.readouterr()


def test_premium_pay_asks_the_payers_registry_as_the_desk_does(national, redis_server, tmp_path: Path, capsys):
    """A 代缴 is paid from the payer's money, in the payer's province (SPEC §4b): `premium-pay` asks the
    payer's registry, as the console's 代缴 form does, and a near-kin insured in another province is
    refused as such (CROSS_PROVINCE), not as a payer who is not insured (the payee's registry knows no
    payer)."""
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"redis_url": redis_server.url, "addresses": {
        f"registry-{p}": f"127.0.0.1:{national.registries[p].port}" for p in ("13", "11")}}))
    args = ["--topology", str(topology)]
    payer = make_test_ids("130102", "1980-01-01", "M")[0]
    child = make_test_ids("110105", "2010-01-01", "F")[0]
    for a in (["enroll", payer, "张三", "EMPLOYEE", "130100"], ["enroll", child, "张小", "RESIDENT", "110000"],
              ["credit", payer, "1000.00"]):
        assert cli.main([*args, *a]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert cli.main([*args, "--json", "premium-pay", payer, child, "CHILD", "2027"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["reason"] == "CROSS_PROVINCE", error


def test_health_names_every_service_and_exits_1_when_one_is_down(national, start_router, loop_thread,
                                                                   tmp_path: Path, capsys):
    """An operator runs `medaid health` in an incident: every service on a line of its own, the ones
    that do not answer marked DOWN, and exit 1 when any is (scripts read the exit code). The router
    down, the CLI asks the others itself rather than answering the router's UNAVAILABLE alone."""
    router = start_router()
    live = {p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()}
    wallet = f"127.0.0.1:{national.wallet.port}"
    known = ["--topology", str(tmp_path / "none.json"), "--wallet", wallet,
             *(f"--registry={p}={a}" for p, a in live.items())]

    def table(argv: list[str], code: int) -> dict[str, str]:
        assert cli.main(argv) == code, capsys.readouterr()
        out = capsys.readouterr().out
        return {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.split()
                and line.split()[-1] in ("SERVING", "DOWN")}

    everyone = {"router", "wallet", "registry-11", "registry-13", "registry-62"}
    seen = table([*known, "--router", router.address, "health"], 0)
    assert set(seen) == everyone and set(seen.values()) == {"SERVING"}, seen
    # The router down: each other service is asked from here, the router marked DOWN.
    dead = f"127.0.0.1:{dead_port()}"
    seen = table([*known, "--router", dead, "health"], 1)
    assert seen == {**dict.fromkeys(everyone, "SERVING"), "router": "DOWN"}, seen
    assert cli.main([*known, "--router", dead, "--json", "health"]) == 1
    rows = {d["name"]: d["serving"] for d in json.loads(capsys.readouterr().out)["downstream"]}
    assert rows == {**dict.fromkeys(everyone, True), "router": False}, rows
    # A registry down behind a serving router: listed DOWN, and the exit status says so.
    loop_thread.run(national.registries["62"].server.stop(0))
    seen = table([*known, "--router", router.address, "health"], 1)
    assert seen == {**dict.fromkeys(everyone, "SERVING"), "registry-62": "DOWN"}, seen
    seen = table([*known, "--router", dead, "health"], 1)
    assert seen == {**dict.fromkeys(everyone, "SERVING"), "router": "DOWN", "registry-62": "DOWN"}, seen


def test_health_lists_the_router_down_when_its_own_store_does_not_answer(national, tmp_path: Path, capsys):
    """A router whose Redis is frozen (SIGSTOP) still answers GetDownstreamHealth, from its registries
    and wallet, but refuses every 2207 STORE_UNAVAILABLE and says NOT_SERVING on its own health
    check: `medaid health` lists it DOWN and exits 1, and SERVING again once its Redis answers."""
    import os
    import signal

    from medaid.common.redis_server import RedisServer
    from medaid.topology import start_service

    registries = ",".join(f"{p}=127.0.0.1:{r.port}" for p, r in national.registries.items())
    wallet = f"127.0.0.1:{national.wallet.port}"
    with RedisServer(appendfsync="no") as own:
        assert own.proc is not None
        router = start_service("router-own-store", "medaid.router", [
            "--port", "0", "--redis-url", own.url, "--registries", registries, "--wallet", wallet,
            "--metrics-port", "off", "--store-check-ms", "100", "--redis-timeout-ms", "300"])
        argv = ["--topology", str(tmp_path / "none.json"), "--router", router.address, "health"]
        try:
            assert cli.main(argv) == 0, capsys.readouterr()
            assert "router" in capsys.readouterr().out
            os.kill(own.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(1.0)  # the router's store check notices
                assert cli.main(argv) == 1
                rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()}
                assert rows["router"] == "DOWN" and rows["registry-13"] == "SERVING", rows
            finally:
                os.kill(own.proc.pid, signal.SIGCONT)
            time.sleep(1.0)
            assert cli.main(argv) == 0, capsys.readouterr()
        finally:
            assert router.stop() == 0


def test_event_time_reads_iso_8601_with_its_offset_or_as_beijing_time():
    nine = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=SHANGHAI).timestamp() * 1000)
    assert base.event_time("2026-11-22T09:30:00+08:00") == nine
    assert base.event_time("2026-11-22T01:30:00Z") == nine
    assert base.event_time("2026-11-22T09:30") == nine  # no offset: Beijing time
    assert base.event_time("2026-11-22") == nine - (9 * 60 + 30) * 60_000
    for bad in ("yesterday", "1668000000000", "1969-12-31T23:59:59Z", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            base.event_time(bad)
    p = cli.build_parser()
    assert p.parse_args(["status", "130102198001010010", "SUSPENDED", "--occurred-at",
                         "2026-11-22T09:30:00+08:00"]).occurred_at == nine
    assert p.parse_args(["move-region", "130102198001010010", "130200"]).occurred_at is None
    with pytest.raises(SystemExit):
        p.parse_args(["move-region", "130102198001010010", "130200", "--occurred-at", "09:30 tomorrow"])


def test_status_and_move_region_send_when_the_event_happened(national, redis_server, tmp_path: Path, capsys):
    """`status` and `move-region` --occurred-at (SPEC §5b, decision 19): an event dated before the newest
    dated one taken for the person is refused EVENT_OUT_OF_ORDER and changes nothing."""
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"redis_url": redis_server.url, "addresses": {
        "registry-13": f"127.0.0.1:{national.registries['13'].port}"}}))
    args = ["--topology", str(topology)]
    pid = make_test_ids("130102", "1980-01-01", "M")[0]

    def run(*a: str) -> dict:
        assert cli.main([*args, "--json", *a]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    def out_of_order(*a: str) -> None:
        assert cli.main([*args, "--json", *a]) == 1
        assert json.loads(capsys.readouterr().out)["error"]["reason"] == "EVENT_OUT_OF_ORDER"

    run("enroll", pid, "张三", "EMPLOYEE", "130100")
    assert run("status", pid, "SUSPENDED", "--occurred-at", "2026-11-22T09:00:00+08:00")["person"]["status"] == \
        "PERSON_STATUS_SUSPENDED"
    # The resumption the province made at 08:59 Beijing time (no offset given) arrives late: refused.
    out_of_order("status", pid, "ACTIVE", "--occurred-at", "2026-11-22T08:59:00")
    assert run("status", pid, "ACTIVE", "--occurred-at", "2026-11-22T01:30:00Z")["person"]["status"] == \
        "PERSON_STATUS_ACTIVE"
    out_of_order("move-region", pid, "130200", "--occurred-at", "2026-11-22T09:10:00+08:00")
    assert run("person", pid)["person"]["pooling_region"] == "130100"
    moved = run("move-region", pid, "130200", "--occurred-at", "2026-11-22T09:45:00+08:00")
    assert moved["person"]["pooling_region"] == "130200"

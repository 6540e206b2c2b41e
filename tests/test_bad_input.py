"""SPEC §7: bad input is rejected with INVALID_ARGUMENT, an ErrorInfo reason and a message, and writes nothing.

Every mutating RPC gets a valid base request (checked to succeed on its own in
`test_base_requests_are_valid`), then one field is spoiled; the call must fail with the exact reason
and leave Redis byte-for-byte as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.rules import MAX_AMOUNT_FEN
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, balance, bind, credit, enroll, new_id, reason, rid, settle, snapshot

# --- the world every case runs against ------------------------------------------------------


@dataclass
class World:
    stub: Any
    channel: grpc.Channel
    helper: str  # employee with a balance
    child: str  # resident child, bound to helper
    adult: str  # employee adult, not bound
    sid: str  # a finished settlement of child (helper paid)


@pytest.fixture
def world(hebei) -> World:
    stub = hebei.stub
    helper = enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    adult = enroll(stub, birth="19900101")
    credit(stub, helper, 100_000)
    bind(stub, helper, child)
    res = settle(stub, child, 1_000)
    assert res.mulaid_pay_fen == 1_000
    return World(stub, hebei.channel, helper, child, adult, res.settlement_id)


def enroll_req(w: World, **kw: Any) -> pb.EnrollPersonRequest:
    fields: dict[str, Any] = dict(request_id=rid("enroll"), id_number=new_id(), name="李四",
                                  insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100")
    fields.update(kw)
    return pb.EnrollPersonRequest(**fields)


def status_req(w: World, **kw: Any) -> pb.UpdatePersonStatusRequest:
    fields: dict[str, Any] = dict(request_id=rid("status"), id_number=w.adult, status=cpb.PERSON_STATUS_SUSPENDED)
    fields.update(kw)
    return pb.UpdatePersonStatusRequest(**fields)


def credit_req(w: World, **kw: Any) -> pb.CreditAccountRequest:
    fields: dict[str, Any] = dict(request_id=rid("credit"), id_number=w.helper, amount_fen=100,
                                  kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    fields.update(kw)
    return pb.CreditAccountRequest(**fields)


def bind_req(w: World, **kw: Any) -> pb.BindMutualAidRequest:
    fields: dict[str, Any] = dict(request_id=rid("bind"), helper_id_number=w.helper, member_id_number=w.adult,
                                  relation=cpb.RELATION_SPOUSE, member_verification=FACE)
    fields.update(kw)
    return pb.BindMutualAidRequest(**fields)


def unbind_req(w: World, **kw: Any) -> pb.UnbindMutualAidRequest:
    fields: dict[str, Any] = dict(request_id=rid("unbind"), helper_id_number=w.helper, member_id_number=w.child)
    fields.update(kw)
    return pb.UnbindMutualAidRequest(**fields)


def proxy_req(w: World, **kw: Any) -> pb.BindProxyRequest:
    fields: dict[str, Any] = dict(request_id=rid("proxy"), holder_id_number=w.helper, relative_id_number=w.adult,
                                  relation=cpb.RELATION_SPOUSE)
    fields.update(kw)
    return pb.BindProxyRequest(**fields, relative_verification=FACE)


def settle_req(w: World, **kw: Any) -> pb.SettleRequest:
    fields: dict[str, Any] = dict(request_id=rid("settle"), patient_id_number=w.child, amount_fen=100,
                                  use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                  institution_code="H13010100001", institution_admdvs="130100")
    fields.update(kw)
    return pb.SettleRequest(**fields)


def reverse_req(w: World, **kw: Any) -> pb.ReverseSettlementRequest:
    fields: dict[str, Any] = dict(request_id=rid("reverse"), settlement_id=w.sid)
    fields.update(kw)
    return pb.ReverseSettlementRequest(**fields)


# Called by the national wallet (cross-province transfers); keyed by transfer_id / return_id.
def debit_req(w: World, **kw: Any) -> pb.DebitForTransferRequest:
    fields: dict[str, Any] = dict(transfer_id=rid("xfer"), sender_id_number=w.helper, amount_fen=100,
                                  recipient_province="11")
    fields.update(kw)
    return pb.DebitForTransferRequest(**fields)


def refund_req(w: World, **kw: Any) -> pb.RefundTransferRequest:
    fields: dict[str, Any] = dict(transfer_id=rid("xfer"), sender_id_number=w.helper, amount_fen=100)
    fields.update(kw)
    return pb.RefundTransferRequest(**fields)


def lot_return_req(w: World, **kw: Any) -> pb.CreditLotReturnRequest:
    fields: dict[str, Any] = dict(return_id=rid("lot"), sender_id_number=w.helper, amount_fen=100,
                                  transfer_id=rid("xfer"))
    fields.update(kw)
    return pb.CreditLotReturnRequest(**fields)


# The field that carries each RPC's idempotency key.
KEY_FIELD = {"DebitForTransfer": "transfer_id", "RefundTransfer": "transfer_id", "CreditLotReturn": "return_id"}
AMOUNT_RPCS = ["CreditAccount", "Settle", "DebitForTransfer", "RefundTransfer", "CreditLotReturn"]

# rpc name, request builder, and the id-number fields it carries
RPCS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "EnrollPerson": (enroll_req, ("id_number",)),
    "UpdatePersonStatus": (status_req, ("id_number",)),
    "CreditAccount": (credit_req, ("id_number",)),
    "BindMutualAid": (bind_req, ("helper_id_number", "member_id_number")),
    "UnbindMutualAid": (unbind_req, ("helper_id_number", "member_id_number")),
    "BindProxy": (proxy_req, ("holder_id_number", "relative_id_number")),
    "Settle": (settle_req, ("patient_id_number",)),
    "ReverseSettlement": (reverse_req, ()),
    "DebitForTransfer": (debit_req, ("sender_id_number",)),
    "RefundTransfer": (refund_req, ("sender_id_number",)),
    "CreditLotReturn": (lot_return_req, ("sender_id_number",)),
}


def _wrong_check(pid: str) -> str:
    right = pid[17]
    wrong = "0" if right != "0" else "1"
    return pid[:17] + wrong


def _x_where_digit_due() -> str:
    for seq in range(1000):
        pid = make("130102", "19800101", f"{seq:03d}")
        if pid[17] != "X":
            return pid[:17] + "X"
    raise AssertionError("unreachable")


BAD_IDS: dict[str, Callable[[], str]] = {
    "wrong_check_character": lambda: _wrong_check(new_id()),
    "X_where_a_digit_is_due": lambda: _x_where_digit_due(),
    # A lower-case x is read as X (SPEC §6): malformed only where X itself would be.
    "lowercase_x_where_a_digit_is_due": lambda: _x_where_digit_due()[:17] + "x",
    "birth_month_13": lambda: make("130102", "19801301", "001"),
    "birth_feb_30": lambda: make("130102", "19800230", "001"),
    "birth_before_1890": lambda: make("130102", "18800101", "001"),
    "unknown_province": lambda: make("990102", "19800101", "001"),
    "17_characters": lambda: new_id()[:17],
    "19_characters": lambda: new_id() + "1",
    "empty": lambda: "",
    "letters": lambda: "13010219800101ABCD",
    "full_width_digits": lambda: "１３０１０２１９８００１０１００１X",
    "trailing_newline": lambda: new_id() + "\n",
    "leading_space": lambda: " " + new_id(),
}


def _check_rejected(rdb: Any, call: Callable[[], Any], want: str, code: grpc.StatusCode | None = None) -> None:
    code = code or grpc.StatusCode.INVALID_ARGUMENT
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    exc = ei.value
    assert exc.code() == code, (exc.code(), exc.details())
    assert reason(exc) == want, (reason(exc), exc.details())
    assert exc.details() and exc.details().strip()
    assert snapshot(rdb) == before, "a rejected request wrote to Redis"


def _check_all(rdb: Any, cases: list[tuple[str, Callable[[], Any], str]]) -> None:
    """Run every case; report all that misbehave at once (one server start for many cases)."""
    assert cases
    failures = []
    for label, call, want in cases:
        try:
            _check_rejected(rdb, call, want)
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(f"{label}: {exc}")
    assert not failures, "\n".join(failures)


def test_base_requests_are_valid(world, rdb):
    """Control: each unspoiled base request succeeds, so the rejections below are caused by the spoiled field."""
    s = world.stub
    before = snapshot(rdb)
    s.EnrollPerson(enroll_req(world, name="王" * 50))  # exactly the 50-character limit
    s.CreditAccount(credit_req(world, amount_fen=MAX_AMOUNT_FEN))
    s.BindMutualAid(bind_req(world, request_id="R" * 64,
                             member_verification=cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE,
                                                                  attestation_id="a" * 64)))
    s.BindProxy(proxy_req(world))
    s.Settle(settle_req(world, amount_fen=MAX_AMOUNT_FEN))
    s.ReverseSettlement(reverse_req(world))
    s.UnbindMutualAid(unbind_req(world))
    s.UpdatePersonStatus(status_req(world))
    assert s.DebitForTransfer(debit_req(world)).replayed is False
    assert s.RefundTransfer(refund_req(world)).refunded_fen == 0  # never debited: cancelled
    assert s.CreditLotReturn(lot_return_req(world)).replayed is False
    assert snapshot(rdb) != before


@pytest.mark.parametrize("rpc", [name for name, (_, fields) in RPCS.items() if fields])
def test_malformed_id_number(world, rdb, rpc):
    builder, fields = RPCS[rpc]
    cases = []
    for field in fields:
        for bad, make_bad in sorted(BAD_IDS.items()):
            req = builder(world, **{field: make_bad()})
            cases.append((f"{field}={bad}", lambda req=req: getattr(world.stub, rpc)(req), "INVALID_ID_NUMBER"))
    _check_all(rdb, cases)


BAD_REQUEST_IDS = {"empty": "", "65_chars": "r" * 65, "space": "has space", "non_ascii": "中文-id",
                   "semicolon": "semi;colon", "slash": "slash/x", "tab": "tab\tx", "newline": "x\n",
                   "64_chars_and_newline": "r" * 64 + "\n"}


def test_bad_request_id(world, rdb):
    cases = []
    for rpc, (builder, _) in RPCS.items():
        for label, request_id in BAD_REQUEST_IDS.items():
            req = builder(world, **{KEY_FIELD.get(rpc, "request_id"): request_id})
            cases.append((f"{rpc}:{label}", lambda rpc=rpc, req=req: getattr(world.stub, rpc)(req),
                          "INVALID_REQUEST_ID"))
    _check_all(rdb, cases)


def test_reverse_bad_settlement_id(world, rdb):
    cases = []
    for settlement_id in ("", "s" * 65, "bad id"):
        req = reverse_req(world, settlement_id=settlement_id)
        cases.append((repr(settlement_id), lambda req=req: world.stub.ReverseSettlement(req), "INVALID_REQUEST_ID"))
    _check_all(rdb, cases)


AMOUNTS = [
    (0, "INVALID_AMOUNT"),
    (-1, "INVALID_AMOUNT"),
    (-100_000, "INVALID_AMOUNT"),
    (-(2**63), "INVALID_AMOUNT"),
    (MAX_AMOUNT_FEN + 1, "AMOUNT_TOO_LARGE"),
    (2**53 + 1, "AMOUNT_TOO_LARGE"),
    (2**63 - 1, "AMOUNT_TOO_LARGE"),
]


@pytest.mark.parametrize("rpc", AMOUNT_RPCS)
def test_bad_amount(world, rdb, rpc):
    builder, _ = RPCS[rpc]
    cases = []
    for amount, want in AMOUNTS:
        req = builder(world, amount_fen=amount)
        cases.append((str(amount), lambda req=req: getattr(world.stub, rpc)(req), want))
    _check_all(rdb, cases)


def test_presettle_bad_amount(world, rdb):
    cases = []
    for amount, want in AMOUNTS:
        req = pb.PreSettleRequest(patient_id_number=world.child, amount_fen=amount, use_account=True,
                                  category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001")
        cases.append((str(amount), lambda req=req: world.stub.PreSettle(req), want))
    _check_all(rdb, cases)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def test_int64_cannot_carry_more_than_int64_on_the_client(world):
    with pytest.raises(ValueError):
        settle_req(world, amount_fen=2**63)
    with pytest.raises(ValueError):
        credit_req(world, amount_fen=2**64 - 1)


RAW_AMOUNTS = [2**64 - 1, 2**63, 2**63 + 12_345, 2**64 - 100]


@pytest.mark.parametrize("rpc", AMOUNT_RPCS)
def test_over_int64_amount_on_the_wire(world, rdb, rpc):
    """A hand-encoded varint above int64 max decodes as a negative int64 and is refused as INVALID_AMOUNT."""
    builder, _ = RPCS[rpc]
    call = world.channel.unary_unary(
        f"/medaid.registry.v1.RegistryService/{rpc}",
        request_serializer=None,
        response_deserializer=lambda b: b,
    )
    cases = []
    for raw in RAW_AMOUNTS:
        req = builder(world, amount_fen=0)  # amount absent from the encoding
        wire = req.SerializeToString() + bytes([(3 << 3) | 0]) + _varint(raw)
        # Sanity: this is how protobuf reads it.
        assert type(req).FromString(wire).amount_fen == raw - 2**64 < 0
        cases.append((hex(raw), lambda wire=wire: call(wire, timeout=10), "INVALID_AMOUNT"))
    _check_all(rdb, cases)


UNKNOWN_ENUMS = [
    ("EnrollPerson", "insurance_type", 999, "UNKNOWN_INSURANCE_TYPE"),
    ("EnrollPerson", "insurance_type", 0, "UNKNOWN_INSURANCE_TYPE"),
    ("EnrollPerson", "insurance_type", -5, "UNKNOWN_INSURANCE_TYPE"),
    ("UpdatePersonStatus", "status", 999, "UNKNOWN_STATUS"),
    ("UpdatePersonStatus", "status", 0, "UNKNOWN_STATUS"),
    ("CreditAccount", "kind", 999, "UNKNOWN_KIND"),
    ("CreditAccount", "kind", 0, "UNKNOWN_KIND"),
    ("BindMutualAid", "relation", 999, "UNKNOWN_RELATION"),
    ("BindMutualAid", "relation", 9, "UNKNOWN_RELATION"),
    ("BindMutualAid", "relation", 0, "UNKNOWN_RELATION"),
    ("BindProxy", "relation", 999, "UNKNOWN_RELATION"),
    ("BindProxy", "relation", 0, "UNKNOWN_RELATION"),
    ("Settle", "category", 999, "UNKNOWN_CATEGORY"),
    ("Settle", "category", 8, "UNKNOWN_CATEGORY"),
    ("Settle", "category", 0, "UNKNOWN_CATEGORY"),
]


def test_unknown_enum_number(world, rdb):
    cases = []
    for rpc, field, value, want in UNKNOWN_ENUMS:
        req = RPCS[rpc][0](world, **{field: value})
        cases.append((f"{rpc}.{field}={value}", lambda rpc=rpc, req=req: getattr(world.stub, rpc)(req), want))
    _check_all(rdb, cases)


def test_unknown_verification_method(world, rdb):
    req = bind_req(world, member_verification=cpb.Verification(method=999, attestation_id="face-1"))
    _check_rejected(rdb, lambda: world.stub.BindMutualAid(req), "UNKNOWN_VERIFICATION_METHOD")


REGIONS = [
    ("110000", "UNKNOWN_REGION"),  # 北京: a real code, but not a 统筹区 of 河北
    ("130199", "UNKNOWN_REGION"),
    ("999999", "UNKNOWN_REGION"),
    ("13010", "INVALID_ADMDVS"),
    ("1301000", "INVALID_ADMDVS"),
    ("13O100", "INVALID_ADMDVS"),
    ("", "INVALID_ADMDVS"),
    ("130100\n", "INVALID_ADMDVS"),
]


def test_enroll_bad_region(world, rdb):
    cases = []
    for region, want in REGIONS:
        req = enroll_req(world, pooling_region=region)
        cases.append((repr(region), lambda req=req: world.stub.EnrollPerson(req), want))
    _check_all(rdb, cases)


def test_bad_admdvs_fields(world, rdb):
    s = world.stub
    req = settle_req(world, institution_admdvs="13010X")
    _check_rejected(rdb, lambda: s.Settle(req), "INVALID_ADMDVS")
    req2 = bind_req(world, member_insured_admdvs="1301")
    _check_rejected(rdb, lambda: s.BindMutualAid(req2), "INVALID_ADMDVS")
    req3 = settle_req(world, institution_admdvs="130100\n")
    _check_rejected(rdb, lambda: s.Settle(req3), "INVALID_ADMDVS")
    req4 = bind_req(world, member_insured_admdvs="110000\n")
    _check_rejected(rdb, lambda: s.BindMutualAid(req4), "INVALID_ADMDVS")


def test_enroll_bad_name(world, rdb):
    cases = []
    for name in ("王" * 51, "a" * 51, "", "   ", "\t\n"):
        req = enroll_req(world, name=name)
        cases.append((repr(name), lambda req=req: world.stub.EnrollPerson(req), "INVALID_NAME"))
    _check_all(rdb, cases)


def test_enroll_bad_flexible_tier(world, rdb):
    cases = []
    for itype, tier in [(cpb.INSURANCE_TYPE_FLEXIBLE, 0), (cpb.INSURANCE_TYPE_FLEXIBLE, 3),
                        (cpb.INSURANCE_TYPE_EMPLOYEE, 1), (cpb.INSURANCE_TYPE_RESIDENT, 2),
                        (cpb.INSURANCE_TYPE_FLEXIBLE, -1)]:
        req = enroll_req(world, insurance_type=itype, flexible_tier=tier)
        cases.append((f"{itype}/{tier}", lambda req=req: world.stub.EnrollPerson(req), "INVALID_FLEXIBLE_TIER"))
    _check_all(rdb, cases)


def test_attestation_too_long(world, rdb):
    for method in (cpb.VERIFICATION_METHOD_FACE, cpb.VERIFICATION_METHOD_UNSPECIFIED):
        req = bind_req(world, member_verification=cpb.Verification(method=method, attestation_id="a" * 65))
        _check_rejected(rdb, lambda req=req: world.stub.BindMutualAid(req), "INVALID_VERIFICATION")


def test_settle_bad_institution_code(world, rdb):
    cases = []
    for code in ("", "H1301010000", "H130101000011", "h13010100001", "H1301010000-", "H13010100001 ",
                 "Ｈ13010100001", "H13010100001\n"):
        req = settle_req(world, institution_code=code)
        cases.append((repr(code), lambda req=req: world.stub.Settle(req), "INVALID_INSTITUTION_CODE"))
    _check_all(rdb, cases)


def test_credit_bad_period(world, rdb):
    cases = []
    for period in ("2026", "2026-1", "20261X", "2026111", "202613", "202600", "000012", "２０２６１１"):
        req = credit_req(world, period=period)
        cases.append((period, lambda req=req: world.stub.CreditAccount(req), "INVALID_PERIOD"))
    _check_all(rdb, cases)


def test_status_bad_province_move(world, rdb):
    s = world.stub
    cases = [
        (status_req(world, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="1"), "INVALID_PROVINCE"),
        (status_req(world, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11x"), "INVALID_PROVINCE"),
        (status_req(world, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11\n"), "INVALID_PROVINCE"),
        (status_req(world, status=cpb.PERSON_STATUS_SUSPENDED, moved_to_province="11"), "INVALID_STATUS"),
        (status_req(world, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="13"), "INVALID_PROVINCE"),
    ]
    for req, want in cases:
        _check_rejected(rdb, lambda req=req: s.UpdatePersonStatus(req), want)


def test_self_binding_is_invalid_and_writes_nothing(world, rdb):
    s = world.stub
    req = bind_req(world, member_id_number=world.helper)
    _check_rejected(rdb, lambda: s.BindMutualAid(req), "SELF_BINDING")
    req2 = proxy_req(world, relative_id_number=world.helper)
    _check_rejected(rdb, lambda: s.BindProxy(req2), "SELF_BINDING")
    # The same request ids are free afterwards: a rejection claims nothing.
    s.BindMutualAid(bind_req(world, request_id=req.request_id))
    s.BindProxy(proxy_req(world, request_id=req2.request_id))


def test_rejections_leave_balances_alone(world, rdb):
    """After a barrage of bad settlements and credits, the balances are what the good calls made them."""
    s = world.stub
    before = (balance(s, world.helper), balance(s, world.adult))
    for amount in (0, -1, MAX_AMOUNT_FEN + 1):
        for call in (lambda a=amount: s.Settle(settle_req(world, amount_fen=a)),
                     lambda a=amount: s.CreditAccount(credit_req(world, amount_fen=a))):
            with pytest.raises(grpc.RpcError) as ei:
                call()
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (balance(s, world.helper), balance(s, world.adult)) == before == (99_000, 0)


def test_refusals_of_done_work_write_nothing_not_even_a_fence(world, rdb):
    """Enrolling someone enrolled, or reversing a reversed settlement, under a new request id is refused
    before the person's lock is taken: the refusal leaves every key as it was, the person's fence
    counter included (a refusal writes nothing, SPEC §7)."""
    s = world.stub
    again = enroll_req(world, id_number=world.adult, name="张三")
    _check_rejected(rdb, lambda: s.EnrollPerson(again), "ALREADY_ENROLLED", grpc.StatusCode.ALREADY_EXISTS)
    s.ReverseSettlement(reverse_req(world))
    twice = reverse_req(world)
    _check_rejected(rdb, lambda: s.ReverseSettlement(twice), "ALREADY_REVERSED", grpc.StatusCode.FAILED_PRECONDITION)


CONTROL_NAMES = ["张\x00三", "张三\n", "张\x1b[31m三", "\t张三", "张三\u200b", "张\u2028三"]


def test_enroll_name_with_control_characters(world, rdb):
    """A name is shown on the 1101 answer, the console and every receipt: one holding a control or an
    invisible character (NUL, a newline, an ANSI escape, a zero-width space) is refused, not stored."""
    cases = []
    for name in CONTROL_NAMES:
        req = enroll_req(world, name=name)
        cases.append((repr(name), lambda req=req: world.stub.EnrollPerson(req), "INVALID_NAME"))
    _check_all(rdb, cases)


def test_enroll_names_with_a_middle_dot_or_latin_letters_are_taken(world):
    """Control: 少数民族 and foreign names (a middle dot, Latin letters and a space) stay valid."""
    for name in ("阿依古丽·买买提", "John Smith", "欧阳娜娜"):
        world.stub.EnrollPerson(enroll_req(world, name=name))


def test_enroll_name_with_a_space_other_than_ascii_is_refused(world, rdb):
    """A name as the 居民身份证 writes it has no space (a middle dot joins a 少数民族 name's parts): a
    full-width or no-break space from an input method would store `张　三` beside `张三`, a different
    person that looks the same, so it is refused (the one rule: registry.validate.invisible)."""
    cases = []
    for name in ("张\u3000三", "张三\u3000", "John\u00a0Smith", "张\u2009三"):
        req = enroll_req(world, name=name)
        cases.append((repr(name), lambda req=req: world.stub.EnrollPerson(req), "INVALID_NAME"))
    _check_all(rdb, cases)


def test_record_death_heir_name_with_control_characters(world, rdb):
    cases = []
    for name in CONTROL_NAMES:
        req = pb.RecordDeathRequest(request_id=rid("death"), id_number=world.adult, heir_id_number=world.helper,
                                    heir_name=name, date_of_death="20261101")
        cases.append((repr(name), lambda req=req: world.stub.RecordDeath(req), "INVALID_NAME"))
    _check_all(rdb, cases)


def test_debit_for_transfer_bad_recipient_province(world, rdb):
    """recipient_province is a 2-digit province code (where the recipient is insured); blank, long or
    unprintable ones are refused, one at a time in the batch as on its own."""
    cases = []
    for value in (" ", "1", "110", "1\x00", "9" * 10_240, "北京"):
        req = debit_req(world, recipient_province=value)
        cases.append((repr(value[:8]), lambda req=req: world.stub.DebitForTransfer(req), "INVALID_PROVINCE"))
    _check_all(rdb, cases)
    before = snapshot(rdb)
    out = world.stub.DebitForTransferBatch(pb.DebitForTransferBatchRequest(
        requests=[debit_req(world, recipient_province="1\n")])).outcomes
    assert [o.error.reason for o in out] == ["INVALID_PROVINCE"] and snapshot(rdb) == before

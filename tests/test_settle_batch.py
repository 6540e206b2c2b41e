"""SettleBatch (the router's batched 2207 hop): every item behaves exactly like a Settle — same split,
same refusal, same idempotency — whether it takes the one-script fast path, the staged
multi-account path, or the one-by-one fallback."""

from __future__ import annotations

import grpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, balance, bind, credit, enroll, new_id, rid, settle_request, total_balances


def _outcome(o: pb.SettleOutcome) -> tuple:
    if o.HasField("error"):
        return ("error", grpc.StatusCode(next(c.value for c in grpc.StatusCode if c.value[0] == o.error.code)).name,
                o.error.reason)
    r = o.response.result
    return ("ok", r.acct_pay_fen, r.wallet_pay_fen, r.mulaid_pay_fen, r.helper_id_number, r.cash_pay_fen,
            r.helper_reason)


def test_a_mixed_batch_answers_each_item_like_settle(hebei, rdb):
    s = hebei.stub
    rich, poor = enroll(s), enroll(s)
    credit(s, rich, 50_000)
    credit(s, poor, 1_000)
    kid = enroll(s, itype=RESIDENT, birth="20150101")
    bind(s, rich, kid)
    bind(s, poor, kid)
    orphan = enroll(s, itype=RESIDENT, birth="20150101")
    lonely = enroll(s, itype=RESIDENT, birth="20150101")
    s.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=rich, relative_id_number=lonely,
                                    relation=cpb.RELATION_CHILD, relative_verification=FACE))
    suspended = enroll(s)
    credit(s, suspended, 5_000)
    s.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=suspended,
                                                      status=cpb.PERSON_STATUS_SUSPENDED))
    stranger = new_id("110105", "19500101")  # valid, never enrolled here
    items = [
        settle_request(poor, 600),                         # own account covers: fast path
        settle_request(kid, 7_000),                        # richest helper pays all: staged path
        settle_request(poor, 900),                         # own 400 left after item 0, no helper: cash 500
        settle_request(kid, 60_000),                       # richest insufficient: cash
        settle_request(orphan, 300),                       # no helper at all: cash
        settle_request(lonely, 300),                       # only a 亲情账户: PROXY_ONLY
        settle_request(kid, 100, use_account=False),       # ACCOUNT_NOT_USED
        settle_request(suspended, 100),                    # refused: MEMBER_NOT_INSURED
        settle_request(stranger, 100),                     # refused: PERSON_NOT_FOUND
        settle_request(kid, 100, category=cpb.CATEGORY_FITNESS),  # refused before any write
        pb.SettleRequest(request_id="bad id!", patient_id_number=kid, amount_fen=1, use_account=True,
                         category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001"),
    ]
    items.append(items[1])                                 # the same request twice in one batch
    before = total_balances(rdb)
    out = s.SettleBatch(pb.SettleBatchRequest(requests=items)).outcomes
    got = [_outcome(o) for o in out]
    assert got[0] == ("ok", 600, 0, 0, "", 0, "")
    assert got[1] == ("ok", 0, 0, 7_000, rich, 0, "")
    assert got[2] == ("ok", 400, 0, 0, "", 500, "")
    assert got[3] == ("ok", 0, 0, 0, "", 60_000, "HELPER_INSUFFICIENT")
    assert got[4] == ("ok", 0, 0, 0, "", 300, "")
    assert got[5] == ("ok", 0, 0, 0, "", 300, "PROXY_ONLY")
    assert got[6] == ("ok", 0, 0, 0, "", 100, "ACCOUNT_NOT_USED")
    assert got[7] == ("error", "FAILED_PRECONDITION", "MEMBER_NOT_INSURED")
    assert got[8] == ("error", "NOT_FOUND", "PERSON_NOT_FOUND")
    assert got[9] == ("error", "FAILED_PRECONDITION", "CATEGORY_NOT_PAYABLE")
    assert got[10] == ("error", "INVALID_ARGUMENT", "INVALID_REQUEST_ID")
    assert got[11] == got[1] and out[11].response == out[1].response  # one effect, one answer
    assert balance(s, rich) == 50_000 - 7_000
    assert balance(s, poor) == 0
    assert before - total_balances(rdb) == 600 + 7_000 + 400
    # Each item's answer is its request id's first answer for a plain Settle too.
    assert s.Settle(items[1]).result == out[1].response.result
    assert s.Settle(items[2]).result == out[2].response.result
    # The refused requests wrote nothing: the same ids settle afterwards once the cause is fixed.
    s.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=suspended,
                                                      status=cpb.PERSON_STATUS_ACTIVE))
    assert s.Settle(items[7]).result.acct_pay_fen == 100
    # No lock is left behind by the staged path.
    assert not list(rdb.scan_iter(match="reg:13:*:lock"))


def test_batched_settlements_conserve_money_under_contention(hebei, rdb):
    s = hebei.stub
    helpers = [enroll(s) for _ in range(6)]
    for h in helpers:
        credit(s, h, 20_000)
    members = [enroll(s, itype=RESIDENT, birth="20150101") for _ in range(20)]
    for i, m in enumerate(members):
        bind(s, helpers[i % 6], m)
        bind(s, helpers[(i + 1) % 6], m)
    credited = 6 * 20_000
    batches = [[settle_request(members[(b * 7 + j) % 20], 700 + j) for j in range(25)] for b in range(8)]
    futures = [s.SettleBatch.future(pb.SettleBatchRequest(requests=b)) for b in batches]
    paid = 0
    for f in futures:
        for o in f.result().outcomes:
            r = o.response.result
            assert o.HasField("response")
            assert r.acct_pay_fen + r.wallet_pay_fen + r.mulaid_pay_fen + r.cash_pay_fen == r.amount_fen
            paid += r.acct_pay_fen + r.mulaid_pay_fen
    for key in rdb.scan_iter(match="reg:13:*:acct"):
        assert int(rdb.hget(key, "bal")) >= 0
    assert total_balances(rdb) == credited - paid
    assert paid > 0

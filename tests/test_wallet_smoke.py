from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, balance, credit, enroll, rid


def test_hebei_employee_sends_to_beijing_parent_who_spends_it_in_beijing(national):
    hebei, beijing, wallet = national.reg("13"), national.reg("11"), national.wallet.stub
    son = enroll(hebei)
    mother = enroll(beijing, itype=RESIDENT, region="110000", division="110105", birth="19550101")
    credit(hebei, son, 100_000)
    wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=mother, province="11",
                                            use_place_admdvs="110000", real_name=FACE))
    wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son, province="13",
                                            use_place_admdvs="130100", real_name=FACE))
    t = wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
        relation=cpb.RELATION_PARENT, amount_fen=60_000, verification=FACE)).transfer
    assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert balance(hebei, son) == 40_000
    acc = wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                          recipient_id_number=mother))
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == 60_000
    res = beijing.Settle(rpb.SettleRequest(
        request_id=rid("2207"), patient_id_number=mother, amount_fen=25_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001", institution_admdvs="110000")).result
    assert (res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (0, 25_000, 0, 0)
    assert res.wallet_balance_after_fen == 35_000
    month = wallet.GetClearingReport(wpb.GetClearingReportRequest(month="202611"))
    assert [(x.sending_province, x.spending_province, x.amount_fen) for x in month.lines] == [("13", "11", 25_000)]
    rev = beijing.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                 settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 25_000
    w = wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother))
    assert w.wallet.balance_fen == 60_000 and w.remaining_by_sender_fen[son] == 60_000
    assert wallet.GetClearingReport(wpb.GetClearingReportRequest(month="202611")).total_fen == 0

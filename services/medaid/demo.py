"""`make run`: start Redis, the four province registries, the wallet, the router and the gateway as
separate processes, seed demo families and narrate 家庭共济, the 医保钱包 and the gateway's JSON
messages, then stop everything cleanly."""

from __future__ import annotations

import itertools
import json
import sys
import urllib.request
from decimal import Decimal
from typing import Any

import grpc

from medaid.common.errors import error_info
from medaid.common.idnumber import make, mask
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.amounts import yuan
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

_rid = itertools.count(1)
DEADLINE_S = 5.0


def rid(tag: str) -> str:
    return f"demo-{tag}-{next(_rid):04d}"


def say(text: str = "") -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, hebei: pb_grpc.RegistryServiceStub) -> None:
        self.r = hebei
        self.names: dict[str, str] = {}

    def who(self, pid: str) -> str:
        return f"{self.names.get(pid, '?')}({mask(pid)})"

    def enroll(self, name: str, division: str, birth: str, seq: str, itype: cpb.InsuranceType.ValueType,
               region: str) -> str:
        pid = make(division, birth, seq)
        self.r.EnrollPerson(pb.EnrollPersonRequest(
            request_id=rid("enroll"), id_number=pid, name=name, insurance_type=itype, pooling_region=region,
        ), timeout=DEADLINE_S)
        self.names[pid] = name
        kind = cpb.InsuranceType.Name(itype).removeprefix("INSURANCE_TYPE_")
        say(f"  参保登记 {self.who(pid)}  {kind:<8} 统筹区 {region}")
        return pid

    def bind(self, helper: str, member: str, relation: cpb.Relation.ValueType, face: bool) -> None:
        req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                      relation=relation)
        if face:
            req.member_verification.CopyFrom(cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE,
                                                              attestation_id="face-" + member[-6:]))
        self.r.BindMutualAid(req, timeout=DEADLINE_S)
        rel = cpb.Relation.Name(relation).removeprefix("RELATION_")
        how = "人脸识别" if face else "16岁以下免人脸"
        say(f"  家庭共济绑定 {self.who(helper)} → {self.who(member)}  ({rel}, {how})")

    def settle(self, patient: str, amount: int, category: cpb.Category.ValueType, label: str) -> pb.SettlementResult:
        res = self.r.Settle(pb.SettleRequest(
            request_id=rid("2207"), patient_id_number=patient, amount_fen=amount, use_account=True,
            category=category, institution_code="H13010100001", institution_admdvs="130100",
        ), timeout=DEADLINE_S).result
        say(f"  2207 结算 {label}: {self.who(patient)} 个人负担 {yuan(amount)}")
        say(f"       本人账户 {yuan(res.acct_pay_fen)} | 钱包 {yuan(res.wallet_pay_fen)} | "
            f"共济 {yuan(res.mulaid_pay_fen)}"
            + (f" (共济人 {self.who(res.helper_id_number)})" if res.helper_id_number else "")
            + f" | 现金 {yuan(res.cash_pay_fen)}")
        if res.helper_reason:
            say(f"       未共济原因: {res.helper_reason}")
        return res

    def balance(self, pid: str) -> int:
        return int(self.r.GetPerson(pb.GetPersonRequest(id_number=pid), timeout=DEADLINE_S).person.balance_fen)


def story(topo: Topology) -> None:
    channels = {name: grpc.insecure_channel(svc.address) for name, svc in topo.services.items()}
    try:
        d = Demo(pb_grpc.RegistryServiceStub(channels["registry-13"]))
        say("== 1. 河北省医保 registry: a 石家庄 family ==")
        zhang = d.enroll("张伟", "130102", "19780312", "031", cpb.INSURANCE_TYPE_EMPLOYEE, "130100")
        li = d.enroll("李娜", "130203", "19800521", "042", cpb.INSURANCE_TYPE_EMPLOYEE, "130200")
        child = d.enroll("张小雨", "130102", "20140606", "022", cpb.INSURANCE_TYPE_RESIDENT, "130100")
        father = d.enroll("张建国", "130102", "19500115", "011", cpb.INSURANCE_TYPE_RESIDENT, "130100")
        mother = d.enroll("王秀英", "130102", "19520908", "024", cpb.INSURANCE_TYPE_RESIDENT, "130100")
        d.r.CreditAccount(pb.CreditAccountRequest(
            request_id=rid("credit"), id_number=zhang, amount_fen=300_000,
            kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=DEADLINE_S)
        say(f"  月度划入 {d.who(zhang)} 个人账户 +{yuan(300_000)};  {d.who(li)} 余额 {yuan(d.balance(li))}")
        d.bind(zhang, child, cpb.RELATION_CHILD, face=False)
        d.bind(li, child, cpb.RELATION_CHILD, face=False)
        d.bind(zhang, father, cpb.RELATION_PARENT, face=True)
        d.r.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=zhang,
                                          relative_id_number=mother, relation=cpb.RELATION_PARENT,
                                          relative_verification=cpb.Verification(
                                              method=cpb.VERIFICATION_METHOD_FACE, attestation_id="face-demo")),
                      timeout=DEADLINE_S)
        say(f"  亲情账户 {d.who(zhang)} 代 {d.who(mother)} 出示医保码 (only a proxy, no 共济)")

        say()
        say("== 2. In-province settlement where a helper pays ==")
        say("  张小雨 has two helpers: 张伟 (¥3,000.00) and 李娜 (¥0.00); the richest one pays, all or nothing.")
        first = d.settle(child, 12_850, cpb.CATEGORY_OUTPATIENT, "儿童门诊")
        say(f"  张伟 balance now {yuan(d.balance(zhang))}")
        d.settle(father, 45_600, cpb.CATEGORY_PHARMACY, "药店购药")

        say()
        say("== 3. A refusal with its reason, and a diagnosis ==")
        d.settle(mother, 5_600, cpb.CATEGORY_PHARMACY, "母亲购药")
        diag = d.r.Diagnose(pb.DiagnoseRequest(member_id_number=mother, helper_id_number=zhang),
                            timeout=DEADLINE_S)
        say(f"  Diagnose({d.who(mother)} ← {d.who(zhang)}): binding={pb.BindingKind.Name(diag.binding_kind)}")
        for f in diag.findings:
            say(f"     {f.code}: {f.message}")
        diag = d.r.Diagnose(pb.DiagnoseRequest(member_id_number=child, helper_id_number=li), timeout=DEADLINE_S)
        say(f"  Diagnose({d.who(child)} ← {d.who(li)}): " + ", ".join(f.code for f in diag.findings))
        in_law = make("130102", "19490303", "015")
        try:
            d.r.BindMutualAid(pb.BindMutualAidRequest(
                request_id=rid("bind"), helper_id_number=zhang, member_id_number=in_law,
                relation=cpb.RELATION_PARENT_IN_LAW), timeout=DEADLINE_S)
            raise SystemExit("an in-law binding was accepted: the demo found a bug")
        except grpc.RpcError as exc:
            info = error_info(exc)
            say(f"  Bind 张伟 → 岳父: refused {exc.code().name} reason={info.reason if info else '?'}")
            say(f"     {exc.details()}")

        say()
        say("== 4. Reversal (2208): every fen back where it came from ==")
        rev = d.r.ReverseSettlement(pb.ReverseSettlementRequest(
            request_id=rid("2208"), settlement_id=first.settlement_id), timeout=DEADLINE_S)
        say(f"  reversed {first.settlement_id}: 共济 {yuan(rev.mulaid_refund_fen)} back to "
            f"{d.who(rev.helper_id_number)}; balance now {yuan(d.balance(zhang))}")
        records = d.r.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=zhang),
                                             timeout=DEADLINE_S).records
        say("  张伟's 共济消费记录: " + "; ".join(
            f"{d.who(r.member_id_number)} {yuan(r.mulaid_pay_fen)} {r.state}" for r in records))

        say()
        say("== 5. Cross-province 医保钱包: 河北 → 北京 ==")
        bj = Demo(pb_grpc.RegistryServiceStub(channels["registry-11"]))
        wallet = wpb_grpc.WalletServiceStub(channels["wallet"])
        li_father = bj.enroll("李国强", "110105", "19520202", "033", cpb.INSURANCE_TYPE_RESIDENT, "110000")
        d.names[li_father] = "李国强"
        d.r.CreditAccount(pb.CreditAccountRequest(
            request_id=rid("credit"), id_number=li, amount_fen=150_000,
            kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=DEADLINE_S)
        face = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="face-demo")
        wallet.OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=li_father, province="11", use_place_admdvs="110000",
            real_name=face), timeout=DEADLINE_S)
        wallet.OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=li, province="13", use_place_admdvs="130200",
            real_name=face), timeout=DEADLINE_S)
        say(f"  {d.who(li_father)} opens a 医保钱包, use-place 110000 北京; {d.who(li)} opens hers "
            "(both sides hold one)")
        try:
            d.r.BindMutualAid(pb.BindMutualAidRequest(
                request_id=rid("bind"), helper_id_number=li, member_id_number=li_father,
                relation=cpb.RELATION_PARENT, member_verification=face, member_insured_admdvs="110000"),
                timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            info = error_info(exc)
            say(f"  in-province bind 李娜 → 父亲: {info.reason if info else '?'} → "
                f"{(info.metadata.get('use') if info else '')}")
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=li, sender_province="13", recipient_id_number=li_father,
            relation=cpb.RELATION_PARENT, amount_fen=100_000, verification=face), timeout=DEADLINE_S).transfer
        say(f"  transfer {t.transfer_id}: {yuan(t.amount_fen)} from {d.who(li)}'s personal account, "
            f"state {wpb.TransferState.Name(t.state)}; 李娜 balance {yuan(d.balance(li))}")
        acc = wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=rid("accept"), transfer_id=t.transfer_id, recipient_id_number=li_father), timeout=DEADLINE_S)
        say(f"  accepted: {wpb.TransferState.Name(acc.transfer.state)}; wallet {yuan(acc.wallet.balance_fen)}")
        res = bj.r.Settle(pb.SettleRequest(
            request_id=rid("2207"), patient_id_number=li_father, amount_fen=38_000, use_account=True,
            category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001", institution_admdvs="110000"),
            timeout=DEADLINE_S).result
        say(f"  2207 结算 at a 北京 hospital: 个人负担 {yuan(res.amount_fen)} → 钱包 {yuan(res.wallet_pay_fen)}, "
            f"现金 {yuan(res.cash_pay_fen)}; wallet left {yuan(res.wallet_balance_after_fen)}")
        report = wallet.GetClearingReport(wpb.GetClearingReportRequest(month="202611"), timeout=DEADLINE_S)
        for line in report.lines:
            say(f"  清算 2026-11: {line.sending_province} → {line.spending_province}: {yuan(line.amount_fen)} "
                f"({line.spend_count} spend)")

        say()
        say("== 6. The other provinces run their own policies ==")
        gs = pb_grpc.RegistryServiceStub(channels["registry-62"])
        g = Demo(gs)
        gh = g.enroll("马强", "620102", "19820101", "051", cpb.INSURANCE_TYPE_EMPLOYEE, "620100")
        gm = g.enroll("马丽", "620102", "20120101", "062", cpb.INSURANCE_TYPE_RESIDENT, "620100")
        g2 = g.enroll("马军", "620102", "19850101", "073", cpb.INSURANCE_TYPE_EMPLOYEE, "620100")
        # 甘肃 runs the pooled model (SPEC §3b): 创建 → 邀请 → 划拨 → the member pays with their own 医保码.
        acct = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("fam"), creator_id_number=gh, commitment=cpb.Verification(
                method=cpb.VERIFICATION_METHOD_FACE, attestation_id="promise-demo")), timeout=DEADLINE_S).account
        gs.CreditAccount(pb.CreditAccountRequest(request_id=rid("credit"), id_number=gh, amount_fen=80_000,
                                                 kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION), timeout=DEADLINE_S)
        gs.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=acct.family_id,
                                                creator_id_number=gh, member_id_number=gm,
                                                relation=cpb.RELATION_CHILD), timeout=DEADLINE_S)
        gs.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
            request_id=rid("huabo"), family_id=acct.family_id, contributor_id_number=gh, amount_fen=20_000),
            timeout=DEADLINE_S)
        say(f"  甘肃 family account {acct.family_id}: 马强 created it, 马丽 (under 16) joined, 划拨 ¥200.00")
        try:
            g.bind(g2, gm, cpb.RELATION_CHILD, face=False)
        except grpc.RpcError as exc:
            info = error_info(exc)
            say(f"  甘肃 binds no helpers (one model per province): reason={info.reason if info else '?'}")
        bill = gs.Settle(pb.SettleRequest(
            request_id=rid("2207"), patient_id_number=gm, amount_fen=6_800, use_account=True,
            category=cpb.CATEGORY_OUTPATIENT, institution_code="H62010000001", institution_admdvs="620100"),
            timeout=DEADLINE_S).result
        say(f"  2207 for 马丽: 家庭共济账户 pays {yuan(bill.mulaid_pay_fen)} (charged to 马强's contribution)")
        prem = gs.PayResidentPremium(ppb.PayResidentPremiumRequest(
            request_id=rid("prem"), payer_id_number=gh, payee_id_number=gm, relation=cpb.RELATION_CHILD,
            year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=DEADLINE_S).premium
        say(f"  代缴: 马强 pays 马丽's 2027 城乡居民医保 premium {yuan(prem.amount_fen)} from his account "
            f"({prem.state})")
        for name in ("registry-11", "registry-13", "registry-62", "registry-35"):
            say(f"  {name} health: {'SERVING' if topo.services[name].healthy() else 'DOWN'}")

        if "gateway" in topo.services:
            say()
            national_gateway(topo, d, child, zhang)
    finally:
        for ch in channels.values():
            ch.close()


def national_gateway(topo: Topology, d: Demo, child: str, helper: str) -> None:
    """A hospital system's unchanged JSON messages (1101, 2207) sent over HTTP to the gateway."""
    url = f"http://{topo.services['gateway'].address}{GATEWAY_PATH}"
    say("== 7. The national JSON gateway: a hospital system's own 1101 / 2207 messages over HTTP ==")
    say(f"  POST {url}")
    seq = itertools.count(1)

    def call(infno: str, data: dict[str, str]) -> dict[str, Any]:
        envelope = {
            "infno": infno, "msgid": f"H1301010000120261122103000{next(seq):04d}", "mdtrtarea_admvs": "130100",
            "insuplc_admdvs": "", "recer_sys_code": "MBS_LOCAL", "dev_no": "", "dev_safe_info": "", "cainfo": "",
            "signtype": "", "infver": "V1.0", "opter_type": "1", "opter": "0001", "opter_name": "收费员",
            "inf_time": "2026-11-22 10:30:00", "fixmedins_code": "H13010100001", "fixmedins_name": "石家庄市第一医院",
            "sign_no": "", "input": {"data": data},
        }
        req = urllib.request.Request(url, data=json.dumps(envelope, ensure_ascii=False).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=DEADLINE_S) as resp:
            answer: dict[str, Any] = json.loads(resp.read(), parse_float=Decimal)
        return answer

    def ok(answer: dict[str, Any]) -> dict[str, Any]:
        if answer["infcode"] != 0:
            raise SystemExit(f"the gateway refused a good message: {answer['err_msg']}")
        output: dict[str, Any] = answer["output"]
        return output

    info = call("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": child, "card_sn": "", "begntime": "",
                         "psn_cert_type": "01", "certno": child, "psn_name": "张小雨"})
    out = ok(info)
    insu = out["insuinfo"][0]
    helpers = [d.who(h["psn_no"]) for h in out["medaid_ext"]["mulaid_helpers"]]
    say(f"  1101 → infcode {info['infcode']}: {d.who(out['baseinfo']['psn_no'])} balc {insu['balc']} "
        f"insuplc_admdvs {insu['insuplc_admdvs']}; 共济人 {', '.join(helpers)}")
    bill = {"psn_no": child, "mdtrt_cert_type": "02", "mdtrt_cert_no": child, "med_type": "11",
            "medfee_sumamt": "58.00", "psn_setlway": "01", "mdtrt_id": "MZ20261122001", "chrg_bchno": "CB0001",
            "insutype": "390", "acct_used_flag": "1"}
    res = call("2207", bill)
    setl = ok(res)["setlinfo"]
    say(f"  2207 medfee_sumamt \"58.00\" → infcode {res['infcode']}: acct_pay {setl['acct_pay']} | "
        f"wallet_pay {setl['wallet_pay']} | acct_mulaid_pay {setl['acct_mulaid_pay']} "
        f"(共济人 {d.who(setl['medaid_ext']['mulaid_psn_no'])}) | psn_cash_pay {setl['psn_cash_pay']}")
    say(f"       张伟 balance now {yuan(d.balance(helper))}")
    bad = call("2207", {**bill, "medfee_sumamt": "58.005"})
    say(f"  2207 medfee_sumamt \"58.005\" → infcode {bad['infcode']}: {bad['err_msg']}")


def main() -> int:
    say("Starting redis-server (AOF, appendfsync always), registries 13, 11, 62, 35 and the wallet …")
    say("(demo clock: 2026-11-22 10:00 Asia/Shanghai, so the 22:00–06:00 transfer window never gets in the way)")
    topo = Topology.start(clock=DEMO_CLOCK)
    try:
        for name, svc in topo.services.items():
            say(f"  {name} on {svc.address}")
        say()
        story(topo)
    finally:
        codes = topo.stop()
        say()
        say("Stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()) + ", redis-server")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

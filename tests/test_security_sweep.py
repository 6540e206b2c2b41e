"""One sweep over every RPC of the registry, the wallet and the router, on the real mTLS topology:

* who may call what: every method × every identity, admitted or refused `CALLER_NOT_ALLOWED` exactly
  as `authz.POLICIES` says, and `POLICIES` exactly as the table of docs/security.md says;
* what an unprivileged caller sees: every method a caller that is not `authz.PRIVILEGED` may reach is
  called on a population of families, helpers, wallets, 代缴 and deaths, and its answer (and each
  refusal's message and metadata) must show no id number and no name of anyone the request does not
  name, in any field or inside any text; a method without a case here fails the sweep;
* the JSON log lines of every service after all this: no id number in clear.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from medaid.common import authz
from medaid.common.errors import error_info
from medaid.common.idnumber import mask
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, bind, credit, enroll, new_id, rid, unmasked_id_numbers

HEBEI = "H13010100001"
GS = {"region": "620100", "division": "620102"}
SERVICES = {authz.REGISTRY: (rpb.DESCRIPTOR.services_by_name["RegistryService"], "registry-13"),
            authz.WALLET: (wpb.DESCRIPTOR.services_by_name["WalletService"], "wallet"),
            authz.ROUTER: (pb.DESCRIPTOR.services_by_name["RouterService"], "router")}
IDENTITIES = ("registry-13", "wallet", "router", "gateway", "operator", "console", "bench", HEBEI)
UNPRIVILEGED = ("router", "bench", HEBEI)


@pytest.fixture(scope="module")
def topo():
    t = Topology.start(clock=DEMO_CLOCK, tls=True)
    try:
        yield t
    finally:
        t.stop()


def _methods() -> list[tuple[str, Any]]:
    return [(f"/{svc}/{m.name}", m) for svc, (desc, _) in SERVICES.items() for m in desc.methods]


def _call(ch: grpc.Channel, method: str, request: Message, response_type: type[Message]) -> Any:
    return ch.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=response_type.FromString)(request, timeout=10)


# --- (a) who may call what -------------------------------------------------------------------------


def test_every_method_admits_exactly_the_roles_of_the_policy(topo):
    """An empty request of each method from each identity: a role the policy names gets past the
    interceptor (whatever the handler then says of an empty request), any other is refused before it."""
    from google.protobuf import symbol_database
    db = symbol_database.Default()
    wrong = []
    for svc, (desc, target) in SERVICES.items():
        for identity in IDENTITIES:
            role = "institution" if identity == HEBEI else authz.role_of(identity)
            with topo.channel(target, identity) as ch:
                for m in desc.methods:
                    method = f"/{svc}/{m.name}"
                    if m.name in ("RunMaintenance",):  # an empty request would run it: admission only by table
                        continue
                    req = db.GetSymbol(m.input_type.full_name)()
                    resp = db.GetSymbol(m.output_type.full_name)
                    try:
                        _call(ch, method, req, resp)
                        got = "admitted"
                    except grpc.RpcError as exc:
                        info = error_info(exc)
                        got = "refused" if info is not None and info.reason == "CALLER_NOT_ALLOWED" else "admitted"
                    want = "admitted" if authz.allows(role, method) else "refused"
                    if got != want:
                        wrong.append(f"{identity} {method}: {got}, policy says {want}")
    assert not wrong, "\n".join(wrong)


def _docs_table() -> dict[str, frozenset[str]]:
    """docs/security.md's table of who may call what, method → roles (ANY for any certificate)."""
    text = (Path(__file__).parents[1] / "docs" / "security.md").read_text()
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] not in ("registry", "wallet", "router"):
            continue
        svc = {"registry": authz.REGISTRY, "wallet": authz.WALLET, "router": authz.ROUTER}[cells[0]]
        names = re.findall(r"`([A-Za-z]+)`", cells[1])
        assert names, f"docs/security.md names no method in: {line}"
        roles = {authz.ANY} if "institution" in cells[2] or "any certificate" in cells[2] else \
            {r.strip() for r in cells[2].split(",")}
        for name in names:
            assert f"/{svc}/{name}" not in out, f"docs/security.md lists {name} twice"
            out[f"/{svc}/{name}"] = roles
    return {k: frozenset(v) for k, v in out.items()}


def test_the_docs_table_is_the_policy():
    docs = _docs_table()
    code = {m: roles for table in authz.POLICIES.values() for m, roles in table.items()
            if not m.startswith((f"/{authz.HEALTH}/", f"/{authz.REFLECTION}/"))}
    assert docs == code


# --- (b) what an unprivileged caller sees ---------------------------------------------------------


def test_every_method_has_a_masking_decision():
    """A new RPC is not shipped until `authz.MASKED` says what an unprivileged caller sees of it."""
    methods = {m for m, _ in _methods()}
    assert methods - set(authz.MASKED) == set()
    assert {m for m in authz.MASKED if not m.startswith((f"/{authz.HEALTH}/", f"/{authz.REFLECTION}/"))} <= methods
    # and a method only privileged callers reach is the only kind left unmasked but for settlement answers
    for method, keep in authz.MASKED.items():
        if method not in methods:
            continue
        service = method.split("/")[1].split(".")[1]
        callers = authz.POLICIES[service].get(method, frozenset())
        if keep is authz.SHOWN and authz.ANY not in callers and service != "router":
            assert callers <= authz.PRIVILEGED | {"router"}, method


def _text(msg: Message) -> str:
    return text_format.MessageToString(msg, as_utf8=True)


class Sweep:
    """Calls, as an unprivileged identity, and the people they might show."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.names: dict[str, str] = {}  # id number → name, of everyone enrolled here
        self.leaks: dict[str, None] = {}  # in order, once each
        self.covered: set[str] = set()
        self._n = 0

    def person(self, reg: Any, **kw: Any) -> str:
        self._n += 1
        name = "测" + "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥"[self._n] + "人"
        pid = enroll(reg, name=name, **kw)
        self.names[pid] = name
        return pid

    def check(self, method: str, identity: str, request: Message, answer: Message | grpc.RpcError,
              also: frozenset[str] = frozenset()) -> None:
        named = set(unmasked_id_numbers(_text(request))) | also
        if isinstance(answer, grpc.RpcError):
            info = error_info(answer)
            shown = f"{answer.details()}\n{info}"
        else:
            shown = _text(answer)
        where = f"{identity} {method.rsplit('/', 1)[1]}"
        for line in shown.splitlines():
            for x in unmasked_id_numbers(line):
                if x not in named:
                    self.leaks[f"{where}: {line.strip().replace(x, mask(x) + '(clear)')}"] = None
        self.leaks.update({f"{where}: name of {mask(pid)} in clear": None for pid, name in self.names.items()
                           if pid not in named and name in shown})

    def call(self, target: str, identity: str, method: str, request: Message,
             also: frozenset[str] = frozenset()) -> Any:
        """The answer (None for a refusal), checked."""
        svc, _, name = method.strip("/").partition("/")
        desc = SERVICES[svc][0].methods_by_name[name]
        from google.protobuf import symbol_database
        resp_type = symbol_database.Default().GetSymbol(desc.output_type.full_name)
        self.covered.add(method)
        with self.topo.channel(target, identity) as ch:
            try:
                answer = _call(ch, method, request, resp_type)
            except grpc.RpcError as exc:
                self.check(method, identity, request, exc, also)
                return None
        self.check(method, identity, request, answer, also)
        return answer


R = f"/{authz.REGISTRY}/"
W = f"/{authz.WALLET}/"
X = f"/{authz.ROUTER}/"


def test_no_unprivileged_answer_shows_another_persons_id_or_name(topo):
    s = Sweep(topo)
    b = "bench"
    with topo.channel("registry-13") as ch:
        reg13 = rpb_grpc.RegistryServiceStub(ch)
        helper, member, other = s.person(reg13), s.person(reg13, itype=RESIDENT, birth="20160101"), s.person(reg13)
        heir = new_id()
        credit(reg13, helper, 50_000)
        credit(reg13, other, 50_000)
        bind(reg13, helper, member)
        # other: a proxy holder of the member's (亲情账户)
        reg13.BindProxy(rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=other,
                                             relative_id_number=member, relation=cpb.RELATION_CHILD,
                                             relative_verification=FACE), timeout=5)
    with topo.channel("registry-62") as ch:
        reg62 = rpb_grpc.RegistryServiceStub(ch)
        creator, spouse = s.person(reg62, **GS), s.person(reg62, **GS)
        child = s.person(reg62, itype=RESIDENT, birth="20150101", **GS)
        credit(reg62, creator, 100_000)
        credit(reg62, spouse, 100_000)
        fid = reg62.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=50_000),
            timeout=10).account.family_id
        for who, rel in ((spouse, cpb.RELATION_SPOUSE), (child, cpb.RELATION_CHILD)):
            reg62.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                                       member_id_number=who, relation=rel), timeout=10)
            if who == spouse:  # a minor child joins on the invitation
                reg62.RespondToInvitation(fpb.RespondToInvitationRequest(
                    request_id=rid("acc"), family_id=fid, member_id_number=who, accept=True, verification=FACE),
                    timeout=10)
    # The registry, as bench (a load harness: not privileged) and as the router.
    r13 = ("registry-13", b)
    s.call(*r13, R + "GetPerson", rpb.GetPersonRequest(id_number=member))
    s.call(*r13, R + "GetPersons", rpb.GetPersonsRequest(id_numbers=[member, helper]))
    s.call("registry-13", "router", R + "GetPerson", rpb.GetPersonRequest(id_number=member))
    s.call("registry-13", "router", R + "GetPersons", rpb.GetPersonsRequest(id_numbers=[member]))
    s.call(*r13, R + "GetAccount", rpb.GetAccountRequest(id_number=helper))
    s.call(*r13, R + "ListBindings", rpb.ListBindingsRequest(id_number=member, include_ended=True))
    s.call("registry-13", "router", R + "ListBindings", rpb.ListBindingsRequest(id_number=member))
    s.call(*r13, R + "ListProxyBindings", rpb.ListProxyBindingsRequest(id_number=member))
    s.call(*r13, R + "Diagnose", rpb.DiagnoseRequest(member_id_number=member, category=cpb.CATEGORY_OUTPATIENT))
    # a bill through the router (bench may act for any institution): the member's, paid by the helper
    with topo.channel("router", b) as ch:
        from medaid.router.v1 import router_pb2_grpc as pb_grpc
        router = pb_grpc.RouterServiceStub(ch)
        setl = router.Settle(pb.SettleRequest(
            msgid=f"{HEBEI}202611221000000001", institution=pb.Institution(fixmedins_code=HEBEI,
                                                                         mdtrtarea_admvs="130100"),
            input=pb.SettleInput(psn_no=member, psn_part_amt_fen=300, acct_used_flag="1",
                                 category=cpb.CATEGORY_OUTPATIENT)), timeout=10).setlinfo
    s.call(*r13, R + "ListConsumptionRecords", rpb.ListConsumptionRecordsRequest(id_number=member))
    s.call(*r13, R + "ListConsumptionRecords", rpb.ListConsumptionRecordsRequest(id_number=helper))
    s.call(*r13, R + "GetAccount", rpb.GetAccountRequest(id_number=helper))
    for who in (b, "router"):
        s.call("registry-13", who, R + "GetSettlement", rpb.GetSettlementRequest(settlement_id=setl.setl_id),
               also=frozenset({member}))
        s.call("registry-13", who, R + "GetSettlements", rpb.GetSettlementsRequest(settlement_ids=[setl.setl_id]),
               also=frozenset({member}))
    s.call(*r13, R + "GetPerson", rpb.GetPersonRequest(id_number=helper))
    # The family account and 代缴 (§3b, §4b), as bench: each names one person; the others are masked.
    r62 = ("registry-62", b)
    s.call(*r62, R + "GetFamilyAccount", fpb.GetFamilyAccountRequest(family_id=fid, id_number=child))
    s.call(*r62, R + "GetFamilyAccount", fpb.GetFamilyAccountRequest(family_id=fid))
    s.call(*r62, R + "TransferIntoFamilyAccount", fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("huabo"), family_id=fid, contributor_id_number=spouse, amount_fen=20_000))
    prem = s.call(*r62, R + "PayResidentPremium", ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=spouse, payee_id_number=child, relation=cpb.RELATION_CHILD,
        year="2027", source=ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid))
    assert prem is not None
    s.call(*r62, R + "ListResidentPremiums", ppb.ListResidentPremiumsRequest(payee_id_number=child))
    s.call(*r62, R + "ListResidentPremiums", ppb.ListResidentPremiumsRequest(year="2027"))
    s.call(*r62, R + "CancelResidentPremium", ppb.CancelResidentPremiumRequest(
        request_id=rid("cancel"), payee_id_number=child, year="2027"))
    s.call(*r62, R + "GetPerson", rpb.GetPersonRequest(id_number=child))
    s.call(*r62, R + "WithdrawContribution", fpb.WithdrawContributionRequest(
        request_id=rid("wd"), family_id=fid, contributor_id_number=spouse))
    s.call(*r62, R + "LeaveFamilyAccount", fpb.LeaveFamilyAccountRequest(
        request_id=rid("leave"), family_id=fid, member_id_number=spouse))
    s.call(*r62, R + "RemoveMember", fpb.RemoveMemberRequest(
        request_id=rid("rm"), family_id=fid, creator_id_number=creator, member_id_number=child))
    with topo.channel("registry-62") as ch:
        late = s.person(rpb_grpc.RegistryServiceStub(ch), **GS)
    s.call(*r62, R + "InviteMember", fpb.InviteMemberRequest(
        request_id=rid("inv"), family_id=fid, creator_id_number=creator, member_id_number=late,
        relation=cpb.RELATION_PARENT))
    s.call(*r62, R + "RespondToInvitation", fpb.RespondToInvitationRequest(
        request_id=rid("acc"), family_id=fid, member_id_number=late, accept=True, verification=FACE))
    s.call(*r62, R + "DissolveFamilyAccount", fpb.DissolveFamilyAccountRequest(
        request_id=rid("dis"), family_id=fid, creator_id_number=creator))
    s.call(*r62, R + "CreateFamilyAccount", fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=spouse, commitment=FACE, initial_transfer_fen=1_000))
    # The wallet: a son in 河北 sends to his mother in 北京, who opened her wallet through him.
    with topo.channel("registry-11") as ch:
        mother = s.person(rpb_grpc.RegistryServiceStub(ch), itype=RESIDENT, region="110000", division="110105",
                          birth="19560101")
    with topo.channel("registry-13") as ch:
        son = s.person(rpb_grpc.RegistryServiceStub(ch))
        credit(rpb_grpc.RegistryServiceStub(ch), son, 10_000)
    w = ("wallet", b)
    s.call(*w, W + "OpenWallet", wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=son, province="13", use_place_admdvs="130100", real_name=FACE))
    s.call(*w, W + "OpenWallet", wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=mother, province="11", use_place_admdvs="110000", real_name=FACE,
        opened_by_id_number=son, opened_by_relation=cpb.RELATION_CHILD))
    t = s.call(*w, W + "CreateTransfer", wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
        relation=cpb.RELATION_PARENT, amount_fen=5_000, verification=FACE)).transfer
    s.call(*w, W + "AcceptTransfer", wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    for who in (b, "router"):
        s.call("wallet", who, W + "GetWallet", wpb.GetWalletRequest(owner_id_number=mother))
    s.call(*w, W + "GetTransfer", wpb.GetTransferRequest(transfer_id=t.transfer_id))
    s.call(*w, W + "ListIncomingTransfers", wpb.ListIncomingTransfersRequest(recipient_id_number=mother))
    s.call(*w, W + "ListOutgoingTransfers", wpb.ListOutgoingTransfersRequest(sender_id_number=son))
    s.call(*w, W + "ListWalletEntries", wpb.ListWalletEntriesRequest(owner_id_number=mother))
    s.call(*w, W + "ChangeUsePlace", wpb.ChangeUsePlaceRequest(
        request_id=rid("place"), owner_id_number=mother, use_place_admdvs="110000"))
    s.call(*w, W + "PayPremium", wpb.PayPremiumRequest(
        request_id=rid("pp"), owner_id_number=mother, amount_fen=100, category=cpb.CATEGORY_OUTPATIENT,
        period="2027"))
    s.call(*w, W + "GetClearingReport", wpb.GetClearingReportRequest(month="202611"))
    s.call(*w, W + "EndWalletRelationship", wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=mother))
    # Status changes and deaths end bindings: the ended ones name the other party.
    s.call(*r13, R + "UnbindMutualAid", rpb.UnbindMutualAidRequest(
        request_id=rid("unbind"), helper_id_number=helper, member_id_number=member))
    s.call(*r13, R + "BindMutualAid", rpb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=helper, member_id_number=member, relation=cpb.RELATION_CHILD,
        member_verification=FACE))
    s.call(*r13, R + "RemoveProxy", rpb.RemoveProxyRequest(
        request_id=rid("rmproxy"), holder_id_number=other, relative_id_number=member, requested_by_id_number=member))
    s.call(*r13, R + "BindProxy", rpb.BindProxyRequest(
        request_id=rid("proxy"), holder_id_number=other, relative_id_number=member, relation=cpb.RELATION_CHILD,
        relative_verification=FACE))
    s.call(*r13, R + "CreditAccount", rpb.CreditAccountRequest(
        request_id=rid("credit"), id_number=helper, amount_fen=100, kind=rpb.CREDIT_KIND_ADJUSTMENT))
    s.call(*r13, R + "MovePoolingRegion", rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=member, pooling_region="130200"))
    s.call(*r13, R + "BindMutualAid", rpb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=other, member_id_number=member, relation=cpb.RELATION_CHILD,
        member_verification=FACE))
    s.call(*r13, R + "RecordDeath", rpb.RecordDeathRequest(
        request_id=rid("death"), id_number=helper, heir_id_number=heir, heir_name="继承人", date_of_death="20261120"))
    s.call(*r13, R + "UpdatePersonStatus", rpb.UpdatePersonStatusRequest(
        request_id=rid("st"), id_number=other, status=cpb.PERSON_STATUS_SUSPENDED))
    s.names[heir] = "继承人"
    s.call(*r13, R + "GetPerson", rpb.GetPersonRequest(id_number=helper))
    s.call(*r13, R + "ListBindings", rpb.ListBindingsRequest(id_number=member, include_ended=True))
    s.call(*r13, R + "EnrollPerson", rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=new_id(), name="新人", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="130100"))
    # A refusal names no one but whom the request names.
    s.call(*r13, R + "BindMutualAid", rpb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=son, member_id_number=member, relation=cpb.RELATION_CHILD,
        member_verification=FACE))
    # 1101 to an institution: the patient in clear, the helpers masked.
    with topo.channel("router", HEBEI) as ch:
        from medaid.router.v1 import router_pb2_grpc as pb_grpc
        q = pb.QueryPersonRequest(msgid=f"{HEBEI}202611221000000002", institution=pb.Institution(
            fixmedins_code=HEBEI, mdtrtarea_admvs="130100"), mdtrt_cert_type="02", mdtrt_cert_no=member)
        s.covered.add(X + "QueryPerson")
        s.check(X + "QueryPerson", HEBEI, q, pb_grpc.RouterServiceStub(ch).QueryPerson(q, timeout=10))
    # Every method an unprivileged caller may reach has a case above, or a reason below not to need one.
    not_here = {
        # the router's settlement answers go to the institution that billed the patient (docs/security.md)
        *(R + m for m in ("PreSettle", "Settle", "SettleBatch", "ReverseSettlement", "CancelRequest", "UndoReversal")),
        *(X + m for m in ("PreSettle", "Settle", "ReverseSettlement", "Undo", "QuerySettlement",
                          "ReconcileTotals", "ReconcileDetails", "GetDownstreamHealth")),
        W + "RunMaintenance",  # operator only
    }
    reachable = {m for m, _ in _methods() if any(authz.allows(authz.role_of(i), m) for i in ("router", "bench"))
                 or authz.ANY in authz.POLICIES[m.split("/")[1].split(".")[1]].get(m, frozenset())}
    assert not (reachable - s.covered - not_here), sorted(reachable - s.covered - not_here)
    assert not s.leaks, "\n".join(s.leaks)
    time.sleep(0.3)  # and the logs of all of it
    for name, svc in topo.services.items():
        text = "\n".join(svc.log_lines)
        assert not unmasked_id_numbers(text), f"an unmasked id number in the logs of {name}"
        assert not [n for n in s.names.values() if n in text], f"a name in clear in the logs of {name}"


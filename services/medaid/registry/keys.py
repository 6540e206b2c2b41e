"""Redis key layout of one province registry.

Everything of one person shares the hash tag `{p:<id>}` (person, account, ledger, settlement
records, consumption records, lock and fence), so each single-account script touches one slot
and runs unchanged on Redis Cluster. Bindings of the province live under one tag `{bind}` so
that a bind checks every structural rule (limit, exclusivity, reverse) in one atomic script.
"""

from __future__ import annotations

PROXY_NS = "nat:{proxy}"


class Keys:
    def __init__(self, province: str) -> None:
        self.ns = f"reg:{province}"
        # What comes before a person id in their keys (settle_read.lua finds helpers' keys with it).
        self.person_prefix = f"{self.ns}:{{p:"

    # person slot
    def person_tag(self, pid: str) -> str:
        return f"{self.ns}:{{p:{pid}}}"

    def person(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:person"

    def account(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:acct"

    def ledger(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:ledger"

    def applied(self, pid: str) -> str:
        """What was done once to the person's account, by id: each credit's request id, each settlement
        id (or undo's money ref) that charged them as a helper; beside them marks that hold '|', which
        no request id holds: `rev|<ref>` a helper's charge returned, `xfer|<transfer>` and
        `xfer-back|<transfer>` a transfer debited and given back, `lotret|<return>` a lot returned,
        `famret|…` and `famrev|…` money back from a family account."""
        return f"{self.person_tag(pid)}:applied"

    def settlement(self, pid: str, sid: str) -> str:
        return f"{self.person_tag(pid)}:setl:{sid}"

    def consumption(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:consume"

    def consumption_index(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:consume_idx"

    def history(self, pid: str) -> str:
        """The person's life-cycle events (JSON list, oldest first)."""
        return f"{self.person_tag(pid)}:history"

    def fence(self, pid: str) -> str:
        return f"{self.person_tag(pid)}:fence"

    # domain indexes: never the idempotency claims (a TTL on claims must not lose a settlement)
    def settlement_index(self, sid: str) -> str:
        """settlement id -> the patient whose slot holds the record."""
        return f"{self.ns}:{{sid:{sid}}}"

    def open_settlements(self) -> str:
        """zset of the entries of flows in progress, scored by start time: what the recovery loop finishes
        when their process died or a service they call did not answer. `S|<patient>|<settlement>`
        (settle), `R|U|<patient>|<settlement>|<request id>` (reverse, undo), `X|L|…` (family), `P|…`
        (代缴), `E|<person>|status|move|death|<request id>|<detail>` (what follows a life-cycle event),
        `B|<helper>|<member>|<request id>|<region>`, `F|<creator>|<family>|<member>|<request id>|<region>`,
        `Q|<holder>|<relative>|<request id>|` (a bind's, an invitation's, a creation's or a 亲情账户
        addition's second read of its people, after its write)."""
        return f"{self.ns}:{{open}}:setl"

    def place_fence(self, entry: str) -> str:
        """The mark of the holder of a bind's (`B|`), a 亲情账户 addition's (`Q|`), an invitation's or a
        creation's (`F|`) entry whose claim the recovery loop took over (`Context.fence_place`), on the slot
        that request writes on (`{bind}`, the national `{proxy}` keyed by this province too, `{fam}`), so
        that its write checks it in the same script."""
        if entry.startswith("Q|"):
            return f"{PROXY_NS}:fenced:{self.ns}:{entry}"
        tag = f"{self.ns}:{{bind}}" if entry.startswith("B|") else self.family_tag()
        return f"{tag}:fenced:{entry}"

    def recovery_tag(self) -> str:
        return f"{self.ns}:{{recovery}}"

    # province index (listing, conservation checks)
    def people_index(self) -> str:
        return f"{self.ns}:{{idx}}:people"

    # bindings slot
    def helpers_of(self, member: str) -> str:
        return f"{self.ns}:{{bind}}:m:{member}"

    def members_of(self, helper: str) -> str:
        return f"{self.ns}:{{bind}}:h:{helper}"

    def all_helpers_of(self, member: str) -> str:
        return f"{self.ns}:{{bind}}:mall:{member}"

    def all_members_of(self, helper: str) -> str:
        return f"{self.ns}:{{bind}}:hall:{helper}"

    def binding(self, helper: str, member: str) -> str:
        return f"{self.ns}:{{bind}}:rec:{helper}:{member}"

    def binding_seq(self) -> str:
        return f"{self.ns}:{{bind}}:seq"

    def unbound_by(self, request_id: str) -> str:
        """The binding an unbind request ended, as it ended it (unbind.lua): a resend answers it, even
        after the pair was bound again."""
        return f"{self.ns}:{{bind}}:unb:{request_id}"

    # 亲情账户 are national (SPEC §5b: holder and relative may be insured in different provinces): one
    # keyspace every registry reads and writes, under one tag so the limit check and the write are atomic.
    def proxies_of_holder(self, holder: str) -> str:
        return f"{PROXY_NS}:ph:{holder}"

    def proxies_of_relative(self, relative: str) -> str:
        return f"{PROXY_NS}:pr:{relative}"

    def proxy_additions(self) -> str:
        return f"{PROXY_NS}:added"

    def proxy_kept(self) -> str:
        """Request ids of 亲情账户 additions whose second read found both sides ACTIVE (proxy_undo.lua)."""
        return f"{PROXY_NS}:kept"

    def proxy_pending(self) -> str:
        """Request ids of 亲情账户 additions written whose second read is not recorded yet (proxy_bind.lua
        marks them, proxy_undo.lua clears the mark): only such an addition may be undone."""
        return f"{PROXY_NS}:pending"

    def proxy_removals(self) -> str:
        return f"{PROXY_NS}:removed"

    # family accounts (SPEC §3b): every family account of the province under one tag `{fam}`, as
    # bindings are under `{bind}`, so that membership rules across families (exclusivity, one
    # account per creator) and a family's money are checked and written by one atomic script.
    def family_tag(self) -> str:
        return f"{self.ns}:{{fam}}"

    def family_seq(self) -> str:
        return f"{self.family_tag()}:seq"

    def family_index(self) -> str:
        """Every family id of the province (conservation checks)."""
        return f"{self.family_tag()}:all"

    def family(self, fid: str) -> str:
        return f"{self.family_tag()}:f:{fid}"

    def family_members(self, fid: str) -> str:
        return f"{self.family_tag()}:m:{fid}"

    def family_lots(self, fid: str) -> str:
        """Contribution lots: zero-padded lot seq -> `contributor:unspent` (oldest first by field)."""
        return f"{self.family_tag()}:lots:{fid}"

    def family_shares(self, fid: str) -> str:
        """Per-contributor unspent share (the sum of their lots)."""
        return f"{self.family_tag()}:shares:{fid}"

    def family_applied(self, fid: str) -> str:
        """Settlement id (or premium money ref) -> the lots a charge took, `c|<sid>` its charges,
        `rev|<sid>` once returned; `x|<transfer id>` per 划拨 credited. The marks hold '|', which no
        request id holds, so that no client's id is one of them."""
        return f"{self.family_tag()}:applied:{fid}"

    def family_returns(self, fid: str) -> str:
        """Operation id -> `PENDING|DONE` + the shares it returns to personal accounts."""
        return f"{self.family_tag()}:ret:{fid}"

    def family_history(self, fid: str) -> str:
        return f"{self.family_tag()}:hist:{fid}"

    def families_of(self, pid: str) -> str:
        """A person's memberships: family id -> INVITED | MEMBER."""
        return f"{self.family_tag()}:of:{pid}"

    def families_given_to(self, pid: str) -> str:
        """The family accounts a person has ever 划拨'd into (a set; kept after they leave): where to
        find the bills their money paid (consumption.py)."""
        return f"{self.family_tag()}:gave:{pid}"

    def family_created_by(self, pid: str) -> str:
        """The creator's ACTIVE family id (one family account per creator)."""
        return f"{self.family_tag()}:by:{pid}"

    def family_lock_tag(self, fid: str) -> str:
        return f"{self.family_tag()}:lk:{fid}"

    # on the contributor's slot
    def family_transfer(self, pid: str, xid: str) -> str:
        """A 划拨 in progress or done: DEBITED -> CREDITED | REFUNDED."""
        return f"{self.person_tag(pid)}:famx:{xid}"

    def family_transfer_months(self, pid: str) -> str:
        """yyyymm -> 划拨 count (policy transfers_per_month)."""
        return f"{self.person_tag(pid)}:famx_month"

    # 代缴 (SPEC §4b): the record of (payee, year) on the payee's slot; list indexes under `{prem}`
    def premium(self, payee: str, year: str) -> str:
        return f"{self.person_tag(payee)}:premium:{year}"

    def premiums_of_year(self, year: str) -> str:
        return f"{self.ns}:{{prem}}:year:{year}"

    def premiums_by_payer(self, payer: str) -> str:
        """`year|payee` entries."""
        return f"{self.ns}:{{prem}}:payer:{payer}"

    def premiums_of_payee(self, payee: str) -> str:
        """years"""
        return f"{self.ns}:{{prem}}:payee:{payee}"

    def premium_lifts(self) -> str:
        """`payee|year` -> the first instant (unix ms) of the insurance year: premiums paid before their
        year started, whose payee the registry's loop makes ACTIVE from then on."""
        return f"{self.ns}:{{prem}}:lifts"

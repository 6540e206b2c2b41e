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
        """zset of `patient|settlement` entries that may be OPEN or REVERSING, scored by start time:
        what the recovery loop finishes when their process died."""
        return f"{self.ns}:{{open}}:setl"

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

    # 亲情账户 are national (SPEC §5b: holder and relative may be insured in different provinces): one
    # keyspace every registry reads and writes, under one tag so the limit check and the write are atomic.
    def proxies_of_holder(self, holder: str) -> str:
        return f"{PROXY_NS}:ph:{holder}"

    def proxies_of_relative(self, relative: str) -> str:
        return f"{PROXY_NS}:pr:{relative}"

    def proxy_removals(self) -> str:
        return f"{PROXY_NS}:removed"

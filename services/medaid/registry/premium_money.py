"""Where a 代缴's money is taken from and given back to (SPEC §4b), by source: a personal account's
debit (premium_debit.lua, only while the payer is as judged), a 医保钱包 spend, a family account's
charge; each once per premium id (`premium_refs.money_ref`). Part of `Premiums` (premiums.py); the
record's flow around these steps is premium_drive.py's."""

from __future__ import annotations

from medaid.common import errors
from medaid.common.lock import Lease
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import premium_rules
from medaid.registry.context import lock_lost
from medaid.registry.premium_checks import PremiumChecks
from medaid.registry.premium_refs import cancel_time, money_ref_of, paid_time, refund_ref

# judgements of one account premium's debit that the payer's person or balance changed under before
# CONTENDED (the recovery loop or a resend finishes it)
MAX_DEBIT_JUDGEMENTS = 5

# The sources whose money is taken with the payer's lock held (`_take`): the payer's status is written
# under it (a status change, a death), so their judgement holds until the money is taken. A personal
# account's debit needs none: premium_debit.lua takes it only while the payer is as judged.
PAYER_LOCKED = ("FAMILY_ACCOUNT", "WALLET")


def payer_locked(rec: dict[str, str]) -> str:
    """The payer whose lock the money of premium record `rec` is taken under besides the payee's, ''
    where none is (`PAYER_LOCKED`; one's own premium: the payee's lock is the payer's)."""
    return rec["payer"] if rec["source"] in PAYER_LOCKED and rec["payer"] != rec["payee"] else ""


class PremiumMoney(PremiumChecks):
    async def _take(self, rec: dict[str, str], lease: Lease, payer_lease: Lease | None) -> tuple[str, bool]:
        """The money, once per premium id: (contributors charged, whether all of it was taken). The
        caller holds the payee's lock (`lease`) and, where the money is taken under it
        (`payer_locked`), the payer's (`payer_lease`)."""
        ctx, k, pid, amount, ref = self.ctx, self.k, rec["payer"], int(rec["amount"]), rec["id"]
        mref = money_ref_of(rec)
        if rec["source"] == "ACCOUNT":
            # The payer is judged again here, as the money is taken (`_account_payer`), and the debit
            # applies the judgement only while the person and the balance are what it was made on.
            for _ in range(MAX_DEBIT_JUDGEMENTS):
                seen, refusal = await self._account_payer(pid, rec["payee"], amount)
                ctx.fault("premium.before_debit")
                status, _ = await ctx.lua["premium_debit"](
                    keys=[k.account(pid), k.ledger(pid), k.applied(pid), k.person(pid)],
                    args=[mref, amount, ref, ctx.clock.now_ms(), "OK" if refusal is None else "VOID", *seen])
                if text(status) != "AGAIN":
                    return "", text(status) in ("OK", "DUP")
            raise errors.unavailable("CONTENDED", "the payer's account kept changing while the premium was taken; "
                                     "retry with the same request id")
        if rec["source"] == "WALLET":
            # As a settlement's wallet share (staged.py): no fence reaches the wallet service, so the
            # leases are renewed first, and a debit that cannot be taken bars the premium's spend id
            # (undoing one a stalled holder got in meanwhile) before the payment is dropped.
            assert payer_lease is not None or not payer_locked(rec), "the payer's lock is the caller's to take"
            for held in (lease, payer_lease):
                if held is not None and not await ctx.locks.extend(held, ctx.lock_ttl_ms):
                    raise lock_lost()
            # The wallet takes a 居民医保 premium whatever the owner's status (one's own comes before
            # ACTIVE): a payer who died or was terminated since the decision pays nothing. Judged under
            # the payer's lock (their status is written under it), held until the debit is answered.
            # The debit clears in the month of the payment's time (`paid_time`), its record's paid_at. A bar
            # names no time: a dropped payment's request id may open again (a resend), with a time of its
            # own, and bars again under the same id (`cancel_spend`), which must be the same request. A
            # spend it finds got in (a stalled holder's) the wallet counts out in that spend's own month.
            if not premium_rules.payer_may_pay(await self.store.person(pid), own=rec["relation"] == premium_rules.OWN):
                await ctx.wallet.cancel_spend(mref, pid)
                return "", False
            ctx.fault("premium.before_wallet_debit")
            after = await ctx.wallet.debit(mref, pid, amount, cpb.CATEGORY_RESIDENT_PREMIUM, rec["place"],
                                           settled_at=paid_time(rec))
            if after is None:
                await ctx.wallet.cancel_spend(mref, pid)
            return "", after is not None
        # The payer's standing is judged again here, as the money is taken: one who left the account,
        # was removed from it, or was suspended, terminated or died since the payment was decided pays
        # nothing. Their status is written under their lock (a status change, a death), held from the
        # judgement to the charge (one paying their own premium holds it as the payee); their member
        # entry is checked by the charge itself (lua/family_charge.lua, AGAIN: judged again).
        fid, own = rec["family"], rec["relation"] == premium_rules.OWN
        assert payer_lease is not None or not payer_locked(rec), "the payer's lock is the caller's to take"

        async def judged() -> tuple[str, bytes, bool]:
            raw, refusal = await self._family_payer(fid, pid, own=own)
            return pid, raw, refusal is None

        _, charges, _ = await self.family.charge(fid, mref, rec["payee"], amount, "RESIDENT_PREMIUM",
                                                 whole=True, payer=judged)
        if sum(c.amount for c in charges) < amount:  # a family premium is paid whole or not at all
            await self.family.refund_charge(rec["family"], mref, "FAMILY_PREMIUM_REFUND")
            return "", False
        return ",".join(f"{c.helper_id}:{c.amount}" for c in charges), True

    async def _give_back(self, rec: dict[str, str]) -> None:
        """A cancellation: the money back to exactly where it came from, once."""
        ctx, k, pid, amount, ref = self.ctx, self.k, rec["payer"], int(rec["amount"]), rec["id"]
        if rec["source"] == "ACCOUNT":
            await ctx.lua["family_payout"](keys=[k.account(pid), k.ledger(pid), k.applied(pid)],
                                           args=[refund_ref(ref), amount, "PREMIUM_REFUND", ref,
                                                 cancel_time(rec) or ctx.clock.now_ms()])
        elif rec["source"] == "WALLET":  # counted out of clearing in the cancellation's month
            await ctx.wallet.refund(money_ref_of(rec), pid, amount, refunded_at=cancel_time(rec))
        else:
            await self.family.refund_charge(rec["family"], money_ref_of(rec), "FAMILY_PREMIUM_REFUND")

"""Redis key layout of the national wallet.

A wallet's keys share `{w:<owner>}`: the wallet hash, its quota lots, entries, spends, clearing
counters, and the records of transfers addressed to it — so accepting a transfer (state change
+ new lot + balance) is one atomic script. A sender's limits share `{s:<sender>}`. Indexes used
by the recovery loop and reports live under `{idx}`.

A transfer is found by its id alone (GetTransfer) through its own index key `{t:<tid>}:to`
(the recipient), written with the record. The request-id claims (`{rid:<id>}`, idempotency.py)
only answer replays: nothing is ever looked up through them, so a claim may expire or be lost
without hiding a transfer, an accept or a return.
"""

from __future__ import annotations


class WalletKeys:
    ns = "wal"

    def wallet_tag(self, owner: str) -> str:
        return f"{self.ns}:{{w:{owner}}}"

    def wallet(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:wallet"

    def opening(self, owner: str) -> str:
        """The request opening the wallet, while it writes the indexes (open_reserve.lua)."""
        return f"{self.wallet_tag(owner)}:opening"

    def lots(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:lots"

    def lot_order(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:lotorder"

    def place_changes(self, owner: str) -> str:
        """The request ids that wrote the wallet's use-place (`Wallets._set_place`): a resend of one
        finds its change made and does not make it again over a later one."""
        return f"{self.wallet_tag(owner)}:places"

    def entries(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:entries"

    def spends(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:spends"

    def spend_bars(self, owner: str) -> str:
        """Spend ids barred before any spend had them (RefundWalletSpend `cancel_if_absent`)."""
        return f"{self.wallet_tag(owner)}:spend_bars"

    def clearing(self, owner: str, month: str) -> str:
        return f"{self.wallet_tag(owner)}:clr:{month}"

    def transfer(self, recipient: str, tid: str) -> str:
        return f"{self.wallet_tag(recipient)}:xfer:{tid}"

    def incoming(self, recipient: str) -> str:
        """The transfers to this recipient, scored by creation time (ListIncomingTransfers)."""
        return f"{self.wallet_tag(recipient)}:xins"

    def transfer_recipient(self, tid: str) -> str:
        """The transfer's index: its id → the recipient, whose slot holds the record."""
        return f"{self.ns}:{{t:{tid}}}:to"

    def onward_debits(self, owner: str) -> str:
        """Onward transfers debited from this wallet, by transfer id (parts taken, refund state)."""
        return f"{self.wallet_tag(owner)}:xouts"

    def returns(self, owner: str) -> str:
        return f"{self.wallet_tag(owner)}:rets"

    def ended(self, owner: str) -> str:
        """When the person's wallet relationships last ended (EndPersonWalletRelationships), by the
        reporting province ("" for every one): a zset, province → the event's time, kept
        `rules.ENDED_KEEP_S`. A transfer recorded after the ending looked for it is judged by it
        (transfer_saga.py `_side_ended`)."""
        return f"{self.wallet_tag(owner)}:ended"

    def sender_ended(self, owner: str) -> str:
        """As `ended`, for an end of only the relationships where the person is the sender
        (ReleaseSenderLots): judges transfers from them and quota they funded or passed on, never a
        transfer to them."""
        return f"{self.wallet_tag(owner)}:sender_ended"

    # sender limits
    def sent(self, sender: str) -> str:
        """The transfers this sender started, scored by creation time (ListOutgoingTransfers); written
        with the limits' reservation, so no transfer that reached a record is missing."""
        return f"{self.ns}:{{s:{sender}}}:sent"

    def pending(self, sender: str) -> str:
        return f"{self.ns}:{{s:{sender}}}:pending"

    def pending_deadline(self, sender: str) -> str:
        """The acceptance deadline of the transfer in `pending`, written with it (reserve.lua)."""
        return f"{self.ns}:{{s:{sender}}}:pending_until"

    def day_count(self, sender: str, day: str) -> str:
        return f"{self.ns}:{{s:{sender}}}:count:{day}"

    def reserved(self, sender: str) -> str:
        return f"{self.ns}:{{s:{sender}}}:reserved"

    # indexes
    def wallets_index(self) -> str:
        return f"{self.ns}:{{idx}}:wallets"

    def inflight(self) -> str:
        return f"{self.ns}:{{idx}}:inflight"

    def inflight_meta(self) -> str:
        return f"{self.ns}:{{idx}}:inflight_meta"

    def returns_inflight(self) -> str:
        return f"{self.ns}:{{idx}}:returns"

    def returns_meta(self) -> str:
        return f"{self.ns}:{{idx}}:returns_meta"

    def notes_due(self) -> str:
        """Use-place notes a registry is owed (`<owner>|<request id>`, scored by when the change was
        made), each written before its change and removed once the registry has the note."""
        return f"{self.ns}:{{idx}}:notes"

    def sent_back(self, base_id: str) -> str:
        """The transfers in flight the ending `base_id` set out to send back (id → recipient), each
        written before its compare-and-set: what the ending sent back is counted from their records
        (`ended_by`), whichever run finished them."""
        return f"{self.ns}:{{idx}}:sent_back:{base_id}"

    def holders(self, sender: str) -> str:
        return f"{self.ns}:{{idx}}:holders:{sender}"

    def maintenance_tag(self) -> str:
        return f"{self.ns}:{{maint}}"

    def transfers_indexed(self) -> str:
        """Set once every transfer record is in its recipient's and its sender's listing (a store
        written before the listings existed is indexed by the first maintenance pass)."""
        return f"{self.ns}:{{maint}}:transfers_indexed"

    def transfer_pattern(self) -> str:
        """SCAN pattern of every transfer record (`transfer`)."""
        return f"{self.ns}:{{w:*}}:xfer:*"

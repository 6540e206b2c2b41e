"""The helpers a settlement charged (or a reversal gave back), as the router answers them."""

from __future__ import annotations

from collections.abc import Iterable

from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb


def helper_pays(charges: Iterable[rpb.HelperCharge]) -> list[pb.HelperPay]:
    """A registry's helper charges (or refunds): every helper (or contributor), in the order they paid."""
    return [pb.HelperPay(psn_no=c.helper_id_number, amount_fen=c.amount_fen, balc_fen=c.balance_after_fen)
            for c in charges]

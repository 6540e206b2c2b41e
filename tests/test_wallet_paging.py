"""The wallet's listings a page at a time (AIP-158: page_size, page_token, next_page_token), against the
real wallet, registries and Redis: the whole history is reachable, nothing is skipped or listed twice
while new entries and transfers arrive between pages, and a token that is not the wallet's is refused
INVALID_PAGE_TOKEN, writing nothing. Same fixtures and people as tests/test_wallet.py."""

from __future__ import annotations

import base64
import threading
from typing import Any

import grpc
import pytest
from medaid.common import page_tokens
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT
from test_wallet import INVALID, Env, at, family, refused


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def entries_page(env: Env, owner: str, size: int, token: str = "") -> wpb.ListWalletEntriesResponse:
    return env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=owner, page_size=size,
                                                                page_token=token))


def a_wallet_with_entries(env: Env, spends: int) -> str:
    """A mother holding ¥100.00 from her son who spent it `spends` fen at a time: 1 + spends entries."""
    son, mother = family(env)
    env.fund(son, "13", mother, 10_000)
    for _ in range(spends):
        env.spend(mother, 1)
    return mother


def test_every_entry_is_reached_page_by_page_newest_first(env):
    mother = a_wallet_with_entries(env, 6)
    whole = [e.seq for e in env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother)).entries]
    assert whole == [7, 6, 5, 4, 3, 2, 1]
    pages, token = [], ""
    while True:
        got = entries_page(env, mother, 3, token)
        pages.append([e.seq for e in got.entries])
        token = got.next_page_token
        if not token:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
    # A page that ends exactly at the first entry says there is no next one.
    assert entries_page(env, mother, 7).next_page_token == ""


def test_entries_written_between_pages_are_neither_skipped_nor_listed_twice(env):
    """A spend lands after each page: the next page goes on from where the last one stopped (the new
    entries are newer than anything listed: on no later page), and every entry there was is listed once."""
    mother = a_wallet_with_entries(env, 4)
    listed: list[int] = []
    got = entries_page(env, mother, 2)
    while True:
        listed += [e.seq for e in got.entries]
        env.spend(mother, 1)
        if not got.next_page_token:
            break
        got = entries_page(env, mother, 2, got.next_page_token)
    assert listed == [5, 4, 3, 2, 1]
    # The page size may change from one page to the next (AIP-158).
    first = entries_page(env, mother, 1)
    assert [e.seq for e in entries_page(env, mother, 4, first.next_page_token).entries] == [7, 6, 5, 4]


def incoming(env: Env, who: str, size: int, token: str = "") -> wpb.ListIncomingTransfersResponse:
    return env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=who, page_size=size,
                                                                        page_token=token))


def test_transfers_created_between_pages_are_neither_skipped_nor_listed_twice(env):
    """Five children send their mother money, two in the same millisecond. She is listed two at a time;
    between pages a sixth sends one (newer: on no later page) and a wallet replica whose clock lags
    records one older than the page last answered (listed on a later page). Each is listed once, in
    order: newest first, one millisecond's by transfer id, the larger first."""
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    kids = [env.person("13", bal=10_000, birth=f"198{n}0101") for n in range(7)]
    sent: dict[str, int] = {}
    for n, when in enumerate((at(22, 10, 1), at(22, 10, 2), at(22, 10, 3), at(22, 10, 3), at(22, 10, 5))):
        env.clock.set(when)
        sent[env.send(kids[n], "13", mother, 100 + n, relation=cpb.RELATION_PARENT).transfer_id] = when
    order = [tid for tid, _ in sorted(sent.items(), key=lambda x: (x[1], x[0]), reverse=True)]
    first = incoming(env, mother, 2)
    assert [t.transfer_id for t in first.transfers] == order[:2]
    env.clock.set(at(22, 10, 9))
    newer = env.send(kids[5], "13", mother, 200).transfer_id
    env.clock.set(at(22, 10, 0))  # before every one listed so far
    older = env.send(kids[6], "13", mother, 300).transfer_id
    rest: list[str] = []
    token = first.next_page_token
    while token:
        got = incoming(env, mother, 2, token)
        rest += [t.transfer_id for t in got.transfers]
        token = got.next_page_token
    assert rest == order[2:] + [older]
    assert newer not in rest
    # Listed from the start again, everything is there once.
    again = incoming(env, mother, 100).transfers
    assert [t.transfer_id for t in again] == [newer] + order + [older]


def test_outgoing_transfers_are_paged_through_to_the_first(env):
    """A son who sent his mother money on five days: listed one a page, the oldest last."""
    son, mother = family(env)
    sent = []
    for day in range(5):
        env.clock.set(at(10 + day, 10))
        sent.append(env.fund(son, "13", mother, 100 + day).transfer_id)
    listed, token = [], ""
    while True:
        got = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son, page_size=1,
                                                                           page_token=token))
        listed += [t.transfer_id for t in got.transfers]
        token = got.next_page_token
        if not token:
            break
    assert listed == sent[::-1]
    # `limit`, the older name, pages the same way.
    old = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son, limit=2))
    nxt = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son, limit=2,
                                                                       page_token=old.next_page_token))
    assert [t.transfer_id for t in [*old.transfers, *nxt.transfers]] == sent[::-1][:4]


def edited(token: str) -> str:
    """The token with one character of its text changed (as a hand-edited link)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    raw = raw[:-1] + ("1" if raw[-1] != "1" else "2")
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def page_token_refused(env: Env, call: Any, req: Any) -> None:
    err = refused(INVALID, "INVALID_PAGE_TOKEN", call, req)
    info = error_info(err)
    assert info is not None and info.metadata["field"] == "page_token"


def test_a_token_that_is_not_the_wallets_is_refused_and_writes_nothing(env):
    mother = a_wallet_with_entries(env, 3)
    son = env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother)) \
        .transfers[0].sender_id_number
    token = entries_page(env, mother, 1).next_page_token
    assert token and mother not in base64.urlsafe_b64decode(token + "==").decode()
    other = a_wallet_with_entries(env, 2)
    other_token = entries_page(env, other, 1).next_page_token
    out_token = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son, page_size=1))
    assert out_token.next_page_token == ""  # one transfer: nothing more
    in_token = incoming(env, mother, 1)
    forged = page_tokens.seal(page_tokens.question("ListWalletEntries", mother), ["999999"])
    before = env.snap()
    for bad in ("garbled!", "bm90IGEgdG9rZW4", token[:-3], edited(token), other_token, forged, "x" * 300,
                "令牌"):
        page_token_refused(env, env.w.ListWalletEntries,
                           wpb.ListWalletEntriesRequest(owner_id_number=mother, page_token=bad))
    assert env.snap() == before
    # A token of one listing is no token of another, nor of the same listing for someone else.
    mothers_in = incoming(env, mother, 1).next_page_token or page_tokens.seal(
        page_tokens.question("ListIncomingTransfers", mother), ["1", "x"])
    page_token_refused(env, env.w.ListOutgoingTransfers,
                       wpb.ListOutgoingTransfersRequest(sender_id_number=mother, page_token=mothers_in))
    page_token_refused(env, env.w.ListIncomingTransfers,
                       wpb.ListIncomingTransfersRequest(recipient_id_number=son, page_token=mothers_in))
    page_token_refused(env, env.w.ListIncomingTransfers,
                       wpb.ListIncomingTransfersRequest(recipient_id_number=mother, page_token=token))
    assert in_token.next_page_token == ""
    assert env.snap() == before


@pytest.mark.parametrize(("method", "person"), [("ListWalletEntries", "owner_id_number"),
                                                ("ListIncomingTransfers", "recipient_id_number"),
                                                ("ListOutgoingTransfers", "sender_id_number")])
def test_page_sizes_are_bounded(env, method, person):
    son, mother = family(env)
    env.fund(son, "13", mother, 1_000)
    request = getattr(wpb, f"{method}Request")
    most = 500 if method == "ListWalletEntries" else 100
    who = son if method == "ListOutgoingTransfers" else mother
    before = env.snap()
    for fields in ({"page_size": most + 1}, {"page_size": -1}, {"page_size": 2, "limit": 3}):
        err = refused(INVALID, "INVALID_LIMIT", getattr(env.w, method), request(**{person: who}, **fields))
        assert error_info(err).metadata["field"] in ("page_size", "limit")
    assert env.snap() == before
    for fields in ({"page_size": most}, {"page_size": 3, "limit": 3}, {"limit": most}, {}):
        getattr(env.w, method)(request(**{person: who}, **fields))


def test_a_page_token_reached_by_the_old_limit_still_pages(env):
    """A caller that sends only `limit` (0.x) gets the same first page as before, and a token with it."""
    mother = a_wallet_with_entries(env, 2)
    got = env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother, limit=2))
    assert [e.seq for e in got.entries] == [3, 2] and got.next_page_token
    with pytest.raises(grpc.RpcError):
        env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother, limit=2,
                                                             page_token=got.next_page_token + "A"))


def test_paging_while_spends_land_concurrently_lists_each_entry_once(env):
    """A thread spends from the wallet without pause while another pages through it one small page after
    another: the entries listed are exactly those the first page started from, down to the first."""
    mother = a_wallet_with_entries(env, 30)
    stop = threading.Event()

    def spend() -> None:
        while not stop.is_set():
            env.spend(mother, 1)

    writer = threading.Thread(target=spend)
    writer.start()
    try:
        got = entries_page(env, mother, 4)
        listed = [e.seq for e in got.entries]
        while got.next_page_token:
            got = entries_page(env, mother, 4, got.next_page_token)
            listed += [e.seq for e in got.entries]
    finally:
        stop.set()
        writer.join()
    assert listed == list(range(listed[0], 0, -1)) and listed[0] >= 31

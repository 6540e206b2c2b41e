"""Rules on the national message's fields that more than one service applies (SPEC §6): each lives
here once, and the gateway, the router and the registries call it."""

from __future__ import annotations

from medaid.common import errors


def insured_place(given: str, *places: str, who: str = "the person") -> None:
    """An insuplc_admdvs a caller sent (where the person is insured, as 1101 answers it) is empty or one
    of `places`, the 统筹区 the message may name ('' entries are none); anything else, another 统筹区 of
    the same province or the province's own code too, is INSURED_PLACE_MISMATCH. `who` names the person
    in the refusal (masked by the caller)."""
    if not given or given in places:
        return
    named = " or ".join(p for p in places if p) or "unknown"
    raise errors.refused("INSURED_PLACE_MISMATCH", f"insuplc_admdvs {given} is not where {who} is insured "
                         f"({named}); send theirs or leave it empty", field="insuplc_admdvs")

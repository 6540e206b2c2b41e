"""What a bench run is configured with and what it seeds: the configuration, the people, the population."""

from __future__ import annotations

from dataclasses import dataclass, field

# What the mixed phase sends (`--mix` names): 2207, 2206, 1101, a wallet transfer (create + accept),
# a 2208 of an earlier settlement, a 2207 resent with its msgid.
MIX_KINDS = ("settle", "presettle", "lookup", "transfer", "reverse", "replay")


def mix_weights(mix: str) -> dict[str, int]:
    """'settle=60,lookup=15' → {'settle': 60, 'lookup': 15}; ValueError for a name the mixed phase does
    not send, a weight that is not a whole number, a name given twice, or no weight above 0."""
    weights: dict[str, int] = {}
    for item in (p.strip() for p in mix.split(",")):
        name, _, weight = item.partition("=")
        name, weight = name.strip(), weight.strip()
        if name not in MIX_KINDS:
            raise ValueError(f"{name!r} is not one of {','.join(MIX_KINDS)}")
        if not weight.isdigit():
            raise ValueError(f"{item!r}: want <name>=<weight, a whole number>")
        if name in weights:
            raise ValueError(f"{name!r} given twice")
        weights[name] = int(weight)
    if not any(weights.values()):
        raise ValueError("no operation has a weight above 0")
    return weights


@dataclass
class Config:
    duration_s: float = 10.0
    concurrency: int = 64
    rate: float = 0.0  # open-loop target rate; 0 = closed loop
    mix: str = "settle=60,presettle=10,lookup=15,transfer=5,reverse=5,replay=5"
    seed: int = 1
    population: int = 3000
    # The provinces whose insured people make up the population, shared out 13:11:62:35 = 5:2:2:1
    # among those chosen (13 and 11 are always in it: the transfer phase's senders and recipients).
    provinces: tuple[str, ...] = ("13", "11", "62", "35")
    phases: tuple[str, ...] = ("settle", "half", "gateway", "transfer", "mixed")
    channels: int = 4
    out: str = "build/bench/report.json"
    plot: str = ""
    quiet: bool = False
    # Failures (refusals excluded) beyond this % of a measured phase's attempts: no measurement, exit 4.
    max_failed_pct: float = 1.0
    # Each measured call's deadline (seeding, the baselines and the resends of unknown outcomes keep
    # population.DEADLINE_S); tests shorten it to leave calls whose outcome the harness cannot know.
    call_deadline_s: float = 10.0


@dataclass
class Person:
    pid: str
    province: str
    employee: bool
    helpers: list[str] = field(default_factory=list)
    wallet: bool = False


@dataclass
class Population:
    people: list[Person]
    employees: list[Person]
    members: list[Person]
    # (sender, 北京 recipient with a wallet): employees outside 11 who only send, so settlements never
    # drain them, each credited enough for every transfer a run can make.
    senders: list[tuple[Person, Person]]
    credited_fen: int = 0
    run: int = 0  # which run against the topology seeded it (Seeding.count_run)

"""What a bench run is configured with and what it seeds: the configuration, the people, the population."""

from __future__ import annotations

from dataclasses import dataclass, field


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

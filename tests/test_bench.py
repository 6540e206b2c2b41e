"""The load harness itself: a short run against a small real topology gives a complete, consistent
report with a true money verdict; a deliberately broken ledger gives a false one."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
import redis
from medaid.bench import money
from medaid.bench import reconcile as reconcile_bench
from medaid.bench.__main__ import BENCH_WALLET_POLICY, parse
from medaid.bench.model import Config
from medaid.bench.report import render_text, write_report
from medaid.bench.run import run_bench
from medaid.topology import DEMO_CLOCK, Topology, start_service


def test_short_bench_run_reports_every_field_and_conserves_money(tmp_path):
    echo = start_service("echo", "medaid.bench.echo", [])
    topo = Topology.start(clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY))
    try:
        cfg = Config(duration_s=1.0, concurrency=8, population=120, seed=7, quiet=True,
                     out=str(tmp_path / "report.json"), plot=str(tmp_path / "settle.csv"))
        pids = {"redis": topo.redis.proc.pid, "echo": echo.proc.pid,
                **{n: svc.proc.pid for n, svc in topo.services.items()}}
        report = asyncio.run(run_bench(cfg, {n: topo.address(n) for n in topo.ports}, topo.redis.url,
                                       echo.address, pids=pids))
        path = write_report(report, cfg.out)
        loaded = json.loads(path.read_text())
        for key in ("cpu_count", "git_sha", "duration_s", "ratio_settle_to_echo", "ratio_gateway_to_echo"):
            assert key in loaded
        for section, keys in {"settle": ("rps", "p50_ms", "p99_ms", "errors"),
                              "transfer": ("rps", "p99_ms", "completed", "refused", "attempted_rps"),
                              "gateway": ("rps", "p50_ms", "p99_ms", "completed"),
                              "echo": ("rps",), "money": ("conserved", "drift_fen", "negative_balances")}.items():
            for k in keys:
                assert k in loaded[section], f"{section}.{k}"
        assert loaded["settle"]["count"] > 0 and loaded["transfer"]["count"] > 0
        assert loaded["settle"]["errors"] == 0
        # Every operation of the mixed phase succeeds, reversals included (a 2208 must come from the
        # institution that settled, which the harness has to get right).
        for op, summary in loaded["mixed"].items():
            if op in ("settle", "presettle", "lookup", "reverse", "replay"):
                assert summary["errors"] == 0, (op, summary["codes"], summary["reasons"])
        # Senders are funded for every transfer a run makes: none is refused, so the transfer rps is all
        # completed transfers; refusals would be counted apart from it.
        for summary in (loaded["transfer"], loaded["mixed"]["transfer"]):
            assert summary["errors"] == 0 and summary["refused"] == 0, (summary["codes"], summary["reasons"])
            assert summary["completed"] == summary["count"]
        t = loaded["transfer"]
        assert t["rps"] <= t["attempted_rps"] and t["completed"] > 0
        # The gateway phase: 2207 as HTTP JSON through the gateway, every one settled, its own ratio.
        g = loaded["gateway"]
        assert g["completed"] > 0 and g["errors"] == 0, (g["codes"], g["reasons"])
        assert loaded["ratio_gateway_to_echo"] == round(g["rps"] / loaded["echo"]["rps"], 3)
        assert g["p50_ms"] <= g["p99_ms"]
        assert loaded["settle"]["p50_ms"] <= loaded["settle"]["p99_ms"] <= loaded["settle"]["max_ms"]
        assert loaded["ratio_settle_to_echo"] == round(loaded["settle"]["rps"] / loaded["echo"]["rps"], 3)
        # Then an open loop at half the rate the settle phase reached, latency from each scheduled send.
        half = loaded["settle_half_load"]
        assert half["rate"] == round(loaded["settle"]["rps"] / 2, 1) and half["count"] > 0 and half["errors"] == 0
        assert half["p50_ms"] <= half["p99_ms"] and half["cpu"]["total_us_per_op"] > 0
        assert f"open loop at half the settle rate ({half['rate']}/s)" in render_text(loaded)
        m = loaded["money"]
        assert m["conserved"] is True and m["drift_fen"] == 0 and m["negative_balances"] == 0
        assert m["credits_in_fen"] == (m["registry_balances_fen"] + m["family_balances_fen"] + m["wallet_balances_fen"]
                                       + m["settled_net_fen"] + m["premiums_net_fen"] + m["wallet_spent_net_fen"]
                                       + m["in_flight_fen"])
        # 甘肃 and 福建 seed family accounts, funded by 划拨; the run's bills may have spent them down.
        assert m["family_accounts"] > 0
        assert m["family_balances_fen"] > 0 or m["ledger_kinds_fen"].get("FAMILY_SPENT", 0) < 0
        assert m["settled_net_fen"] > 0 and m["wallet_balances_fen"] > 0
        rows = (tmp_path / "settle.csv").read_text().splitlines()
        assert rows[0] == "seq,latency_ms" and len(rows) == loaded["settle"]["completed"] + 1
        assert "MONEY: conserved=True" in render_text(loaded)
        # CPU per operation per process, around each phase (Linux /proc).
        for phase in (loaded["settle"], loaded["gateway"], loaded["transfer"], loaded["mixed"]["all"]):
            cpu = phase["cpu"]
            assert set(cpu["processes"]) == {*pids, "load generator"}
            assert cpu["total_us_per_op"] == sum(p["us_per_op"] for p in cpu["processes"].values())
            assert cpu["busiest"] == max(cpu["processes"], key=lambda n: cpu["processes"][n]["cpu_s"])
            assert cpu["processes"]["load generator"]["us_per_op"] > 0
        assert loaded["settle"]["cpu"]["processes"]["router"]["us_per_op"] > 0
        # Where no process waits for a CPU, each side is bounded by its busiest process.
        busiest = {side: max(p["us_per_op"] for p in loaded[side]["cpu"]["processes"].values())
                   for side in ("echo", "settle")}
        assert loaded["echo"]["cpu"]["processes"]["echo"]["us_per_op"] > 0
        assert loaded["ratio_settle_to_echo_by_busiest"] == round(busiest["echo"] / busiest["settle"], 3)
        assert f"by busiest process {loaded['ratio_settle_to_echo_by_busiest']}" in render_text(loaded)
        assert loaded["transfer"]["cpu"]["processes"]["wallet"]["us_per_op"] > 0
        assert loaded["transfer"]["cpu"]["processes"]["router"]["us_per_op"] < \
            loaded["transfer"]["cpu"]["processes"]["wallet"]["us_per_op"]  # transfers never touch the router
        assert "cpu µs/op settle: " in render_text(loaded)
        assert loaded["config"]["run"] == 1

        # Run again against the same topology (as `--target` does with `make up`'s): a new population
        # and new msgids, every operation succeeds, and the tallies agree with what this run added.
        again_cfg = Config(duration_s=0.5, concurrency=8, population=120, seed=7, quiet=True,
                           phases=("settle", "transfer"))
        again = asyncio.run(run_bench(again_cfg, {n: topo.address(n) for n in topo.ports}, topo.redis.url,
                                      echo.address))
        assert again["config"]["run"] == 2
        assert again["settle"]["count"] > 0 and again["settle"]["errors"] == 0, again["settle"]["reasons"]
        assert again["transfer"]["errors"] == 0, again["transfer"]["reasons"]
        assert again["money"]["conserved"] is True and not again["money"]["tally_mismatches"], again["money"]
        assert again["money"]["credits_in_fen"] > m["credits_in_fen"]

        # A deliberately broken fixture: one fen appears in an account without a ledger entry.
        r = redis.Redis(port=topo.redis.port)
        victim = next(iter(r.scan_iter(match="reg:13:*:acct")))
        r.hincrby(victim, "bal", 1)
        broken = money.check(r)
        assert broken.conserved is False
        assert broken.drift_fen == 1 and broken.ledger_mismatches == 1
        r.hincrby(victim, "bal", -2)  # and one fen lost
        assert money.check(r).drift_fen == -1
        r.close()
    finally:
        topo.stop()
        echo.stop()


def test_locustfile_compiles_and_uses_the_harness_pieces():
    """Locust itself is an optional extra; its scenario must still parse and send what the gateway phase sends."""
    import ast
    from pathlib import Path

    import medaid.bench

    source = (Path(medaid.bench.__file__).parent / "locustfile.py").read_text()
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"gateway", "money", "seed", "Harness", "HttpUser", "task", "events"} <= imported
    assert "gateway.envelope_2207" in source and "money.check" in source and "gateway.read_answer" in source


def test_seeded_population_survives_the_trip_to_the_locust_process():
    from medaid.bench import seed
    from medaid.bench.model import Person, Population

    helper, member = Person("130102198001010010", "13", True), Person("130102201506010029", "13", False)
    member.helpers.append(helper.pid)
    sender, recipient = Person("620102198001010016", "62", True), Person("110105195503010012", "11", False, wallet=True)
    pop = Population([helper, member, recipient], [helper], [member], [(sender, recipient)], 12345)
    back = seed.from_json(json.loads(json.dumps(seed.to_json(pop))))
    assert back == pop


def test_open_loop_hands_each_request_its_scheduled_send_time():
    """The open loop fires at the rate whatever the completions, and a request's latency counts from
    its scheduled send time: a generator held up (here: a blocked event loop) cannot hide the wait."""
    from medaid.bench.run import Harness

    harness = Harness.__new__(Harness)  # the loop itself needs no topology
    harness.cfg = Config(quiet=True)
    dues: list[tuple[int, float]] = []

    async def worker(i: int, due: float) -> None:
        dues.append((i, due))
        if i == 0:
            time.sleep(0.2)  # hold the whole loop up, as an overloaded generator would be

    async def scenario() -> None:
        t0 = time.perf_counter()
        await harness.open_loop("settle", worker, None, 0.5, 100.0)  # type: ignore[arg-type]
        assert len(dues) == 50 and [i for i, _ in dues] == list(range(50))
        for i, due in dues:
            assert abs(due - (dues[0][1] + i / 100.0)) < 1e-6
        assert dues[0][1] - t0 < 0.05
        assert dues[25][1] < dues[0][1] + 0.26  # scheduled on time although sent after the 0.2 s stall

    asyncio.run(scenario())


def test_provinces_option_keeps_13_and_11_and_refuses_others():
    cfg, _ = parse(["--provinces", "13,11,62"])
    assert cfg.provinces == ("13", "11", "62")
    assert parse([])[0].provinces == ("13", "11", "62", "35")
    for bad in ("13,62", "11,62,35", "13,11,44"):
        with pytest.raises(SystemExit):
            parse(["--provinces", bad])


def test_reconciliation_bench_times_3201_3202_and_the_2207s_beside_them():
    """medaid.bench.reconcile, small: the hospital's day reconciles to the fen through the router, the
    gateway's 3202 answers every uploaded row and every settlement of the day as a mismatch, and other
    institutions' 2207s are timed alone and beside the reconciliations."""
    topo = Topology.start(clock=DEMO_CLOCK)
    try:
        target = {"addresses": {n: topo.address(n) for n in topo.ports}, "redis_url": topo.redis.url}
        report = asyncio.run(reconcile_bench.measure(target, settlements=60, rate=20, duration_s=1.0, repeat=1,
                                                     gateway_rows=200, seed=5, population=200))
    finally:
        topo.stop()
    assert (report["settlements"], report["day"]) == (60, "2026-11-22")
    router = report["router"]
    assert (router["3201_count"], router["3202_rslt"], router["3202_mismatches"]) == (60, "0", 0)
    assert len(router["3201_s"]) == len(router["3202_s"]) == 1
    for part, beside, runs in ((report["router_2207"], "beside_3201", "3201_s"),
                               (report["gateway_2207"], "beside_3202", "3202_s")):
        for latencies in (part["alone"], part[beside]):
            assert latencies["count"] > 0
            assert 0 < latencies["p50_ms"] <= latencies["p99_ms"] <= latencies["max_ms"]
        assert part[runs], "no reconciliation ran beside the 2207s"
    # Each of the file's rows is missing on the platform, and each of the day's settlements from the file.
    assert report["gateway_2207"]["3202_mismatches"] == [200 + 60]


def test_gateway_phase_counts_an_unreachable_province_as_failed_not_refused():
    """A registry that stops answering makes the gateway answer infcode -1 with a retryable reason
    (REGISTRY_UNAVAILABLE): the system failed, no business rule said no. The gateway phase must count
    it with the failures, as the gRPC settle phase counts UNAVAILABLE, not as a refusal."""
    import aiohttp
    from medaid.bench import gateway
    from medaid.bench.model import Person, Population
    from medaid.bench.run import Harness
    from medaid.bench.stats import OpStats

    topo = Topology.start(provinces=("13", "11"), wallet=False, clock=DEMO_CLOCK)
    try:
        topo.services["registry-13"].stop()
        hebei = Person("130102198001010010", "13", True)
        pop = Population([hebei], [hebei], [], [])
        harness = Harness(Config(quiet=True), {n: topo.address(n) for n in topo.ports}, topo.redis.url)
        st = OpStats("gateway")

        async def one() -> None:
            async with aiohttp.ClientSession() as session:
                await harness.op_gateway(pop, session, f"http://{topo.address('gateway')}{gateway.CALL_PATH}", st)

        asyncio.run(one())
    finally:
        topo.stop()
    summary = st.summary(1.0)
    assert summary["reasons"] == {"REGISTRY_UNAVAILABLE": 1}, summary
    assert (summary["completed"], summary["errors"], summary["refused"]) == (0, 1, 0), summary
    assert summary["codes"] == {"UNAVAILABLE": 1}


def test_mix_option_refuses_names_and_weights_the_mixed_phase_cannot_run():
    """`--mix 2207=50,wallet=50` used to run a mixed phase of no operation at all (and exit 0); every
    name must be one the phase sends, every weight a whole number, at least one of them above 0."""
    cfg, _ = parse(["--mix", "settle=50, reverse=25,replay=25"])
    assert cfg.mix == "settle=50, reverse=25,replay=25"
    for bad in ("2207=50,wallet=50", "settle=60,lookups=40", "settle", "settle=x", "settle=-1", "settle=0",
                "settle=50,settle=50", ""):
        with pytest.raises(SystemExit):
            parse(["--mix", bad])


def test_the_hundred_and_first_run_against_a_topology_seeds_people_of_its_own():
    """Each run against one topology seeds new people (docs: `--target` may drive the same topology
    again and again). The run took ID-number divisions of its own, but only 100 of them exist per
    province: run 101 (of a small population; of a 10,000 one, run 10) got run 1's people again."""
    from medaid.bench.run import Harness

    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY))
    try:
        addresses = {n: topo.address(n) for n in topo.ports}
        people: list[set[str]] = []
        for seed, run in ((1, 1), (2, 101)):
            harness = Harness(Config(population=24, concurrency=2, seed=seed, provinces=("13", "11"), quiet=True),
                              addresses, topo.redis.url)
            harness.run = run

            async def seed_it(h: Harness = harness) -> set[str]:
                await h.open()
                try:
                    pop = await h.seed_population()
                finally:
                    await h.close()
                return {p.pid for p in pop.people} | {s.pid for s, _ in pop.senders}

            people.append(asyncio.run(seed_it()))
    finally:
        topo.stop()
    assert len(people[0]) == len(people[1]) and not people[0] & people[1]


def test_seeding_for_locust_counts_its_run_like_make_bench():
    """`python -m medaid.bench.seed` (the Locust scenario's seeding) against a topology that already
    served a run: it is a run of its own (bench:runs), with people and msgids of its own. It used to
    seed run 1's people whatever the seed, and stop with ALREADY_EXISTS on their credits."""
    from medaid.bench import seed

    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY))
    try:
        state = {"addresses": {n: topo.address(n) for n in topo.ports}, "redis_url": topo.redis.url}
        pops = [seed.from_json(json.loads(json.dumps(seed.to_json(asyncio.run(seed.seed(
            Config(population=24, concurrency=2, seed=s, provinces=("13", "11"), quiet=True), state))))))
            for s in (1, 2)]
        r = redis.Redis.from_url(topo.redis.url)
        runs = int(r.get("bench:runs") or 0)
        r.close()
    finally:
        topo.stop()
    assert [p.run for p in pops] == [1, 2] and runs == 2
    assert not {p.pid for p in pops[0].people} & {p.pid for p in pops[1].people}


def test_options_for_the_started_topology_are_refused_with_target():
    """--cluster, --replicas and --tls shape the topology the bench starts; with --target (a running
    one) they did nothing, silently: a run over plain gRPC against an mTLS topology, or a report a
    reader takes for a cluster's. Refused like --metrics off/compare."""
    for extra in (["--cluster"], ["--replicas", "wallet=2"], ["--tls"]):
        with pytest.raises(SystemExit):
            parse(["--target", "build/run/topology.json", *extra])
        parse(extra)  # without --target they start such a topology
    parse(["--target", "build/run/topology.json", "--tls-dir", "build/certs"])


def test_phases_option_refuses_a_phase_the_bench_does_not_have():
    """`--phases 2207` or `--phases settle,mix` used to run the baselines alone (or skip the phase)
    and exit 0, a report of no phase a reader asked for."""
    assert parse(["--phases", "settle,half"])[0].phases == ("settle", "half")
    assert parse([])[0].phases == Config.phases
    for bad in ("2207", "settle,mix", "", ","):
        with pytest.raises(SystemExit):
            parse(["--phases", bad])


@pytest.fixture(scope="module")
def bench_targets(tmp_path_factory):
    """One small started topology, as `make up` leaves it: a state file for it, and one whose router
    address answers nothing (every 2207 fails UNAVAILABLE at once; seeding and transfers still work,
    and no fen moves, so money stays conserved)."""
    from support import dead_port

    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY),
                          log_level="WARNING")
    try:
        folder = tmp_path_factory.mktemp("targets")
        addresses = {n: topo.address(n) for n in topo.ports}
        pids = {"redis": topo.redis.proc.pid, **{n: svc.proc.pid for n, svc in topo.services.items()}}
        files = {}
        for name, router in (("healthy", addresses["router"]), ("dead_router", f"127.0.0.1:{dead_port()}")):
            files[name] = folder / f"{name}.json"
            files[name].write_text(json.dumps({"addresses": {**addresses, "router": router},
                                               "redis_url": topo.redis.url, "pids": pids}))
        yield files
    finally:
        topo.stop()


def _bench_main(target, tmp_path, *extra: str) -> tuple[int, dict]:
    from medaid.bench.__main__ import main

    out = tmp_path / f"report-{time.monotonic_ns()}.json"
    rc = main(["--target", str(target), "--duration", "1", "--concurrency", "4", "--population", "24",
               "--provinces", "13,11", "--quiet", "--out", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_bench_exits_4_when_a_phase_failed_beyond_the_threshold(bench_targets, tmp_path, capsys):
    """Every 2207 of the settle phase failed (UNAVAILABLE: the router does not answer), nothing moved,
    money is conserved: the run is no measurement, and CI must see a non-zero exit. It exited 0."""
    rc, report = _bench_main(bench_targets["dead_router"], tmp_path, "--phases", "settle")
    s = report["settle"]
    assert s["count"] > 0 and s["completed"] == 0 and s["codes"].keys() == {"UNAVAILABLE"}
    assert report["money"]["conserved"] is True
    assert rc == 4
    v = report["validity"]
    assert v["valid"] is False and v["max_failed_pct"] == 1.0
    assert v["phases_over"] == {"settle": {"count": s["count"], "failed": s["count"], "failed_pct": 100.0}}
    assert s["failed"] == s["count"]
    assert "INVALID MEASUREMENT" in capsys.readouterr().out
    # The threshold is an option: at 100 % the same run is accepted (and says so).
    rc, report = _bench_main(bench_targets["dead_router"], tmp_path, "--phases", "settle", "--max-failed-pct", "100")
    assert rc == 0 and report["validity"]["valid"] is True and report["validity"]["max_failed_pct"] == 100.0
    # A healthy run exits 0; refusals (a business rule said no) are answers, not failures.
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "settle,transfer")
    assert rc == 0, report.get("validity")
    assert report["validity"] == {"valid": True, "max_failed_pct": 1.0, "phases_over": {}}
    for bad in ("-1", "101", "x"):
        with pytest.raises(SystemExit):
            parse(["--max-failed-pct", bad])


def test_every_phase_reports_the_seconds_it_measured(bench_targets, tmp_path):
    """`duration_s` is the configured length; the baselines (at most 5 and 3 s) and the transfer phase
    (at most 8 s) run shorter, the open loop at half load runs until its last request is answered. A
    reader had no elapsed time per phase, so could not recompute a rate from the counts."""
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "settle,half,transfer,mixed",
                             "--duration", "1.5")
    assert rc == 0 and report["duration_s"] == 1.5
    rows = {k: report[k] for k in ("echo", "redis_lua", "settle", "settle_half_load", "transfer")}
    rows.update({f"mixed.{k}": s for k, s in report["mixed"].items()})
    for name, s in rows.items():
        # A closed loop also waits for what is in flight at the end; the open loop's last send is due
        # before the end (at half the settle rate), and it waits for its answer too.
        assert s["elapsed_s"] >= (1.5 if name != "settle_half_load" else 1.5 - 1 / s["rate"]), name
        assert s["rps"] == round(s["completed"] / s["elapsed_s"], 1), name
        assert s["attempted_rps"] == round(s["count"] / s["elapsed_s"], 1), name
    assert len({s["elapsed_s"] for k, s in rows.items() if k.startswith("mixed.")}) == 1


def test_cpu_per_operation_is_per_completed_operation(bench_targets, tmp_path):
    """CPU per operation was the CPU over the attempts: failures that come back at once (a router
    that does not answer) made a phase look cheap, and a phase that completed nothing had a cost per
    operation, and a `ratio_settle_to_echo_by_busiest` above 1. It is per completed operation now,
    with the cost per attempt beside it."""
    rc, report = _bench_main(bench_targets["dead_router"], tmp_path, "--phases", "settle,mixed",
                             "--mix", "settle=50,transfer=50")
    assert rc == 4
    settle, mixed = report["settle"], report["mixed"]["all"]
    assert settle["completed"] == 0 and settle["count"] > 0
    assert mixed["count"] > mixed["completed"] > 0  # the transfers completed, the 2207s failed
    for s in (settle, mixed):
        cpu = s["cpu"]
        gen = cpu["processes"]["load generator"]
        assert gen["cpu_s"] > 0
        assert abs(gen["us_per_attempt"] - gen["cpu_s"] / s["count"] * 1e6) <= 1
        assert cpu["total_us_per_attempt"] == sum(p["us_per_attempt"] for p in cpu["processes"].values())
    # Nothing completed: no cost per operation (null), and no ratio by the busiest process.
    assert settle["cpu"]["total_us_per_op"] is None
    assert all(p["us_per_op"] is None for p in settle["cpu"]["processes"].values())
    assert "ratio_settle_to_echo_by_busiest" not in report
    gen = mixed["cpu"]["processes"]["load generator"]
    assert abs(gen["us_per_op"] - gen["cpu_s"] / mixed["completed"] * 1e6) <= 1
    assert gen["us_per_op"] > gen["us_per_attempt"]
    assert mixed["cpu"]["total_us_per_op"] == sum(p["us_per_op"] for p in mixed["cpu"]["processes"].values())
    text = render_text(report)
    assert "cpu µs/op settle: no operation completed" in text


def test_numeric_options_the_bench_cannot_run_are_usage_errors():
    """`--rate -5` (or nan, inf) scheduled its sends forever without ever sleeping: the open loop
    hung the bench, seeding done, and filled memory. `--concurrency 0`, `--duration 0` or
    `--channels 0` measured nothing (or stopped in a traceback after seeding) and could exit 0."""
    cfg, _ = parse(["--rate", "0", "--duration", "0.5", "--concurrency", "1", "--channels", "1", "--population", "24"])
    assert (cfg.rate, cfg.duration_s, cfg.concurrency, cfg.channels, cfg.population) == (0.0, 0.5, 1, 1, 24)
    assert parse(["--rate", "250.5"])[0].rate == 250.5
    for option, bad in (("--rate", "-5"), ("--rate", "nan"), ("--rate", "inf"), ("--rate", "x"),
                        ("--duration", "0"), ("--duration", "-1"), ("--duration", "nan"), ("--duration", "inf"),
                        ("--concurrency", "0"), ("--concurrency", "-3"), ("--channels", "0"),
                        ("--population", "0"), ("--population", "-10")):
        with pytest.raises(SystemExit) as exc:
            parse([option, bad])
        assert exc.value.code == 2, (option, bad)


def test_half_phase_without_a_closed_loop_settle_phase_is_a_usage_error():
    """`half` runs at half the rate a closed-loop `settle` phase reached: `--phases half` alone, or
    with `--rate` (an open-loop settle phase), ran no phase at all, reported the baselines and
    `ratio_settle_to_echo` 0.0, and exited 0."""
    assert parse(["--phases", "settle,half"])[0].phases == ("settle", "half")
    assert parse(["--phases", "settle", "--rate", "100"])[0].rate == 100.0
    # The default phases with --rate: every phase but half.
    assert parse(["--rate", "100"])[0].phases == ("settle", "gateway", "transfer", "mixed")
    for argv in (["--phases", "half"], ["--phases", "half,gateway"], ["--phases", "settle,half", "--rate", "100"]):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2, argv


def test_gateway_phase_over_tls_settles_with_the_institutions_tokens():
    """`--tls` starts the topology with mTLS + authorization, where the gateway requires an
    institution's credential. The gateway phase sent none: every 2207 was answered
    CREDENTIAL_REQUIRED, counted as a business refusal, and the run said `0 failed` and exited 0.
    It now carries the bearer token of an institution the topology issued one to; without a
    credential, the gateway's authentication answers are failures (as UNAUTHENTICATED is on gRPC)."""
    echo = start_service("echo", "medaid.bench.echo", [])
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY),
                          log_level="WARNING", tls=True)
    try:
        addresses = {n: topo.address(n) for n in topo.ports}
        cfg = Config(duration_s=0.5, concurrency=4, population=24, provinces=("13", "11"), quiet=True,
                     phases=("gateway",))
        report = asyncio.run(run_bench(cfg, addresses, topo.redis.url, echo.address, tls=topo.tls("bench"),
                                       institution_tokens=topo.institution_tokens))
        g = report["gateway"]
        assert g["count"] > 0 and g["completed"] == g["count"], (g["codes"], g["reasons"])
        assert report["money"]["conserved"] is True and report["validity"]["valid"] is True
        # No credential (an mTLS topology whose tokens the bench does not hold): no measurement.
        report = asyncio.run(run_bench(cfg, addresses, topo.redis.url, echo.address, tls=topo.tls("bench")))
        g = report["gateway"]
        assert g["count"] > 0 and g["completed"] == 0 and g["refused"] == 0 and g["failed"] == g["count"], g
        assert g["codes"] == {"UNAUTHENTICATED": g["count"]} and g["reasons"] == {"CREDENTIAL_REQUIRED": g["count"]}
        assert report["validity"]["phases_over"]["gateway"]["failed_pct"] == 100.0
    finally:
        topo.stop()
        echo.stop()


def test_no_settle_ratio_without_a_settle_phase(bench_targets, tmp_path, capsys):
    """`--phases gateway` (a documented command) reported `ratio_settle_to_echo` 0.0 and the text
    `ratio settle/echo 0.0`, a settle phase that reached nothing, when none ran; the gateway's ratio
    is absent without a gateway phase, and so is the settle phase's now."""
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "transfer")
    assert rc == 0 and "settle" not in report
    assert "ratio_settle_to_echo" not in report and "ratio_gateway_to_echo" not in report
    assert "ratio settle/echo" not in capsys.readouterr().out


def test_reconciliation_and_seeding_options_they_cannot_run_are_usage_errors(tmp_path):
    """`medaid.bench.reconcile --rate 0` stopped in a ZeroDivisionError once the population was seeded
    and the day settled; a negative or infinite rate scheduled its 2207s forever without sleeping;
    `--repeat 0` or `--settlements 0` stopped in a traceback. `medaid.bench.seed --population 0`
    printed an empty population, on which the Locust scenario stopped. Usage errors now (exit 2),
    checked as `make bench` checks its options, before the target is read."""
    from medaid.bench import seed

    missing = str(tmp_path / "no-topology.json")
    for option, bad in (("--rate", "0"), ("--rate", "-5"), ("--rate", "inf"), ("--rate", "nan"),
                        ("--duration", "0"), ("--duration", "-1"), ("--duration", "inf"),
                        ("--settlements", "0"), ("--repeat", "0"), ("--gateway-rows", "-1"),
                        ("--population", "0")):
        with pytest.raises(SystemExit) as exc:
            reconcile_bench.main(["--target", missing, option, bad])
        assert exc.value.code == 2, (option, bad)
    for option, bad in (("--population", "0"), ("--population", "-3"), ("--concurrency", "0")):
        with pytest.raises(SystemExit) as exc:
            seed.main(["--target", missing, option, bad])
        assert exc.value.code == 2, (option, bad)
    # What they can run reaches the target (here: none there).
    with pytest.raises(FileNotFoundError):
        reconcile_bench.main(["--target", missing, "--rate", "0.5", "--gateway-rows", "0"])


def test_reconciliation_bench_counts_a_failed_2207_and_exits_4(tmp_path, capsys):
    """One 2207 of the timed ones failing (here: the router's per-institution rate limit answers
    RESOURCE_EXHAUSTED) ended the whole run in a traceback, the day's settling and every figure
    lost. Each 2207, and each reconciliation run beside them, is now counted with its status and
    reason as `make bench` counts them; failures beyond --max-failed-pct make the run no
    measurement (`validity`, exit 4, as `make bench`), the report printed all the same."""
    topo = Topology.start(clock=DEMO_CLOCK, log_level="WARNING", rate_limit_rps=2, rate_limit_burst=10)
    try:
        target = tmp_path / "topology.json"
        target.write_text(json.dumps({"addresses": {n: topo.address(n) for n in topo.ports},
                                      "redis_url": topo.redis.url}))
        argv = ["--target", str(target), "--settlements", "5", "--rate", "20", "--duration", "1", "--repeat", "1",
                "--gateway-rows", "20", "--seed", "3", "--population", "200"]
        rc = reconcile_bench.main(argv)
        report = json.loads(capsys.readouterr().out)
        rc_lenient = reconcile_bench.main([*argv, "--seed", "4", "--max-failed-pct", "100"])
        lenient = json.loads(capsys.readouterr().out)
    finally:
        topo.stop()
    assert rc == 4
    alone = report["router_2207"]["alone"]
    assert alone["count"] > alone["completed"] > 0, alone
    assert alone["codes"].get("RESOURCE_EXHAUSTED") == alone["failed"] > 0
    assert alone["reasons"].get("RATE_LIMITED") == alone["failed"]
    assert report["gateway_2207"]["alone"]["codes"].get("RESOURCE_EXHAUSTED", 0) > 0
    v = report["validity"]
    assert v["valid"] is False and v["max_failed_pct"] == 1.0
    assert v["phases_over"]["router_2207.alone"] == {
        "count": alone["count"], "failed": alone["failed"],
        "failed_pct": round(100 * alone["failed"] / alone["count"], 2)}
    assert rc_lenient == 0 and lenient["validity"] == {"valid": True, "max_failed_pct": 100.0, "phases_over": {}}
    with pytest.raises(SystemExit) as exc:
        reconcile_bench.main(["--target", str(target), "--max-failed-pct", "101"])
    assert exc.value.code == 2


def test_mixed_phase_counts_a_2207_as_a_2207_before_anything_is_settled(bench_targets, tmp_path):
    """`--phases mixed` without a settle phase starts with nothing settled: a `reverse` or `replay`
    pick then sent a fresh 2207 and counted it under its own row, so `mixed.replay` reported
    settlements as replays (more than the money verdict's replay hits) and `mixed.reverse` more
    reversals than settlements. They are counted as what they are, a 2207 (`mixed.settle`)."""
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "mixed", "--mix", "reverse=50,replay=50")
    assert rc == 0, report["validity"]
    mixed, m = report["mixed"], report["money"]
    assert mixed["settle"]["completed"] > 0, mixed.keys()
    assert mixed["replay"]["completed"] == m["replay_hits"] + m["replay_mismatches"] > 0
    assert 0 < mixed["reverse"]["completed"] <= mixed["settle"]["completed"]
    assert mixed["all"]["count"] == sum(s["count"] for k, s in mixed.items() if k != "all")


def test_mixed_phase_all_row_counts_the_reasons_of_its_operations(tmp_path):
    """`mixed.all` summed its operations' status codes but not their reason codes: it reported
    `reasons: {}` beside rows that had some (here: a `make up` wallet's policy, 3 transfers a day per
    sender, refuses the rest). It is their sum now, codes and reasons alike."""
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, log_level="WARNING")
    try:
        target = tmp_path / "topology.json"
        target.write_text(json.dumps({"addresses": {n: topo.address(n) for n in topo.ports},
                                      "redis_url": topo.redis.url}))
        # One worker: two senders (sender_count), so the seventh transfer is refused however slowly
        # the machine runs; with four workers (eight senders) a loaded machine sent too few in 1 s.
        rc, report = _bench_main(target, tmp_path, "--phases", "mixed", "--mix", "settle=20,transfer=80",
                                 "--concurrency", "1", "--duration", "3")
    finally:
        topo.stop()
    assert rc == 0, report["validity"]
    rows = {k: s for k, s in report["mixed"].items() if k != "all"}
    every = report["mixed"]["all"]
    reasons: dict[str, int] = {}
    codes: dict[str, int] = {}
    for s in rows.values():
        for total, part in ((reasons, s["reasons"]), (codes, s["codes"])):
            for k, n in part.items():
                total[k] = total.get(k, 0) + n
    assert rows["transfer"]["refused"] > 0 and reasons, rows["transfer"]
    assert every["reasons"] == reasons and every["codes"] == codes
    assert every["count"] == sum(s["count"] for s in rows.values())
    assert (every["completed"], every["refused"]) == (sum(s["completed"] for s in rows.values()),
                                                     sum(s["refused"] for s in rows.values()))


def test_calls_whose_outcome_the_bench_could_not_know_are_resent_before_the_money_verdict(tmp_path):
    """A 2207 answered DEADLINE_EXCEEDED or UNAVAILABLE (REGISTRY_UNAVAILABLE: the router stopped
    waiting for a batch the registry then applied) may have settled. The harness left it out of its
    tally, so an open loop beyond capacity reported `conserved=False`, drift 0 and exit 3: money lost,
    where none was. Like a hospital, it now resends each such call with its msgid once the phases are
    done and counts what it settled (`money.unknown_outcomes`)."""
    echo = start_service("echo", "medaid.bench.echo", [])
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY),
                          log_level="WARNING")
    try:
        addresses = {n: topo.address(n) for n in topo.ports}
        # A deadline far below a settlement's latency: most 2207s and 2208s time out at the client
        # while the router and the registries go on to settle (or reverse) them.
        cfg = Config(duration_s=1.0, concurrency=8, population=48, provinces=("13", "11"), quiet=True,
                     phases=("settle", "gateway", "mixed"), mix="settle=50,reverse=50", call_deadline_s=0.004)
        report = asyncio.run(run_bench(cfg, addresses, topo.redis.url, echo.address))
    finally:
        topo.stop()
        echo.stop()
    s, m = report["settle"], report["money"]
    assert s["failed"] > 0 and s["codes"].get("DEADLINE_EXCEEDED", 0) > 0, s["codes"]
    assert m["drift_fen"] == 0 and m["tally_mismatches"] == [], m
    assert m["conserved"] is True
    unknown = m["unknown_outcomes"]
    assert unknown["resent"] >= s["failed"] and unknown["unresolved"] == 0, unknown
    assert unknown["settled"] > 0, unknown
    assert "unknown outcomes resent with their msgids" in render_text(report)


def test_a_target_that_names_no_topology_is_a_usage_error(tmp_path, capsys):
    """`--target` naming no state file (a typo, or `make up` not run) started the echo server and
    stopped in a FileNotFoundError traceback (exit 1, "the bench itself stopped"); a file that is not
    a topology's state stopped in a KeyError. `--tls-dir` without `--target` was ignored: the bench
    started a topology of its own over plain gRPC. Usage errors now (exit 2), saying what is wrong."""
    from medaid.bench.__main__ import main

    not_state = tmp_path / "notes.json"
    not_state.write_text('{"hello": 1}')
    for argv, says in ((["--target", str(tmp_path / "absent.json")], "no such state file"),
                       (["--target", str(not_state)], "not a topology's state file"),
                       (["--tls-dir", str(tmp_path)], "--tls-dir: with --target")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--duration", "1", "--quiet", "--out", str(tmp_path / "r.json")])
        assert exc.value.code == 2, argv
        assert says in capsys.readouterr().err, argv


def test_open_loop_run_reports_no_settle_to_echo_ratio(bench_targets, tmp_path, capsys):
    """Under `--rate` the settle phase completes what was asked of it, so `ratio_settle_to_echo` was
    the requested rate over the echo's capacity, readable as a capacity figure. Left out now."""
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "settle", "--rate", "40")
    assert rc == 0 and report["settle"]["completed"] > 0
    assert "ratio_settle_to_echo" not in report
    assert not re.search(r"ratio settle/echo \d", capsys.readouterr().out)


def test_half_load_rate_of_a_slow_settle_phase_is_not_rounded_to_a_closed_loop():
    """A settle phase under 0.1/s rounded its half to 0: the `half` phase then ran closed-loop and
    the text report stopped in a KeyError on `rate`."""
    from medaid.bench.run import half_rate

    assert half_rate(0.08) == 0.04
    assert half_rate(1277.3) == 638.6


def test_gateway_phase_against_a_target_without_a_gateway_is_a_usage_error(tmp_path, capsys):
    """`--phases gateway` with a `--target` whose state names no gateway ran nothing and exited 0."""
    from medaid.bench.__main__ import main

    state = tmp_path / "no-gateway.json"
    state.write_text(json.dumps({"addresses": {"router": "127.0.0.1:1"}, "redis_url": "redis://127.0.0.1:1/0"}))
    with pytest.raises(SystemExit) as exc:
        main(["--target", str(state), "--phases", "settle,gateway", "--duration", "1", "--quiet",
              "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    assert "no gateway" in capsys.readouterr().err


def test_target_run_reports_metrics_only_as_far_as_the_state_file_says(bench_targets, tmp_path):
    """`config.metrics` said "on" for every `--target` run, whatever the target ran with. A state file
    that names no /metrics endpoints says nothing: null."""
    rc, report = _bench_main(bench_targets["healthy"], tmp_path, "--phases", "transfer")
    assert rc == 0 and report["config"]["metrics"] is None


def test_a_store_that_takes_a_connection_and_never_answers_ends_the_run(monkeypatch):
    """The bench's own Redis calls had no timeout: a target whose Redis accepted the connection and
    never answered (a stalled server, a wrong port held by something else) hung the bench for good.
    Each call now ends in a timeout error, which stops the run."""
    import socket

    import redis as redis_sync
    from medaid.bench import population
    from medaid.bench.model import Config

    monkeypatch.setattr(population, "REDIS_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # listens (the kernel completes the handshake), never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        seeding = population.Seeding(Config(), {}, url)
        t0 = time.monotonic()
        with pytest.raises(redis_sync.exceptions.TimeoutError):
            seeding.count_run()
        assert time.monotonic() - t0 < 5

"""A bench run's report: the ghz-style text and the JSON file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from medaid.bench.cpu import busiest_us
from medaid.bench.cpu import render as render_cpu


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render_text(report: dict[str, Any]) -> str:
    lines = [
        "medaid bench",
        f"  git {report['git_sha']}  cpus {report['cpu_count']}  duration {report['duration_s']}s per phase  "
        f"concurrency {report['config']['concurrency']}  rate {report['config']['rate'] or 'closed-loop'}  "
        f"population {report['config']['population']} ({','.join(report['config'].get('provinces', []))})  "
        f"seed {report['config']['seed']}",
        f"  mix {report['config']['mix']}",
        "",
        f"  {'op':<18}{'count':>8}{'s':>7}{'rps':>9}{'err':>6}{'min':>8}{'mean':>8}{'p50':>8}{'p90':>8}{'p95':>8}"
        f"{'p99':>8}{'max':>8}  (s measured; rps = completed / s; latencies in ms, completed requests only)",
    ]

    def row(name: str, s: dict[str, Any]) -> None:
        lines.append(f"  {name:<18}{s['count']:>8}{s['elapsed_s']:>7.2f}{s['rps']:>9}{s['errors']:>6}"
                     f"{s['min_ms']:>8.2f}{s['mean_ms']:>8.2f}{s['p50_ms']:>8.2f}{s['p90_ms']:>8.2f}{s['p95_ms']:>8.2f}"
                     f"{s['p99_ms']:>8.2f}{s['max_ms']:>8.2f}")

    row("echo (baseline)", report["echo"])
    row("redis lua debit", report["redis_lua"])
    for key in ("settle", "settle_half_load", "gateway", "transfer"):
        if key in report:
            row("settle @ half" if key == "settle_half_load" else key, report[key])
    for name, s in report.get("mixed", {}).items():
        row(f"mixed.{name}", s)
    lines.append("")
    for key in ("settle", "gateway", "transfer"):
        if key in report and (report[key]["codes"] or report[key]["reasons"]):
            s = report[key]
            lines.append(f"  {key}: {s['completed']} completed ({s['rps']}/s), {s['refused']} refused, "
                         f"{s['errors'] - s['refused']} failed ({s['attempted_rps']}/s attempted); "
                         f"status codes {s['codes']}  reasons {s['reasons']}")
    for name, s in report.get("mixed", {}).items():
        if name != "all" and (s["errors"] or s["reasons"]):
            lines.append(f"  mixed.{name} status codes {s['codes']}  reasons {s['reasons']}")
    cpu_lines = [render_cpu(name, s["cpu"]) for name, s in
                 [("echo", report["echo"]), *((k, report[k]) for k in ("settle", "settle_half_load", "gateway",
                                                                       "transfer") if k in report),
                  *([("mixed", report["mixed"]["all"])] if "mixed" in report else [])] if s.get("cpu")]
    if cpu_lines:
        lines += ["", *cpu_lines]
    m = report["money"]
    ratios = [f"{name}/echo {report[key]}" for name, key in (("settle", "ratio_settle_to_echo"),
                                                              ("gateway", "ratio_gateway_to_echo")) if key in report]
    lines += [
        "",
        *([f"  ratio {'  '.join(ratios)}"] if ratios else []),
        *([_bound_line(report)] if "ratio_settle_to_echo_by_busiest" in report else []),
        *([f"  open loop at half the settle rate ({report['settle_half_load']['rate']}/s): p50 "
           f"{report['settle_half_load']['p50_ms']:.2f} ms, p99 {report['settle_half_load']['p99_ms']:.2f} ms"]
          if "settle_half_load" in report else []),
        f"  MONEY: conserved={m['conserved']}  drift={m['drift_fen']} fen  negative balances={m['negative_balances']}"
        f"  ledger mismatches={m['ledger_mismatches']}  replay hits={m['replay_hits']}"
        f" (mismatches {m['replay_mismatches']})",
        f"         credits in {m['credits_in_fen']} = registry {m['registry_balances_fen']} + family accounts "
        f"{m['family_balances_fen']} ({m['family_accounts']}) + wallets {m['wallet_balances_fen']} + settled "
        f"{m['settled_net_fen']} + premiums {m['premiums_net_fen']} + wallet spent {m['wallet_spent_net_fen']}"
        f" + in flight {m['in_flight_fen']} (+ drift {m['drift_fen']})",
    ]
    if (u := m.get("unknown_outcomes", {})).get("resent"):
        lines.append(f"         unknown outcomes resent with their msgids: {u['resent']} ({u['settled']} took effect, "
                     f"{u['unresolved']} still unanswered)")
    if m["tally_mismatches"]:
        lines.append(f"         tally mismatches: {m['tally_mismatches']}")
    if "validity" in report:
        v = report["validity"]
        over = "; ".join(f"{n} {o['failed']} of {o['count']} failed ({o['failed_pct']} %)"
                         for n, o in v["phases_over"].items())
        lines.append(f"  INVALID MEASUREMENT (over {v['max_failed_pct']} % failed, exit 4): {over}" if over else
                     f"  failures within {v['max_failed_pct']} % of every measured phase's attempts")
    return "\n".join(lines)


def _bound_line(report: dict[str, Any]) -> str:
    (en, eu), (sn, su) = busiest_us(report["echo"]["cpu"]), busiest_us(report["settle"]["cpu"])
    return (f"  ratio settle/echo by busiest process {report['ratio_settle_to_echo_by_busiest']} (where no "
            f"process waits for a CPU: echo {eu} µs/op in {en}, settle {su} µs/op in {sn})")


def write_report(report: dict[str, Any], out: str) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return path

"""The metrics side of the deployment files against the code (docs/operations.md): the Grafana
dashboard asks only for metrics and labels the services export, Prometheus scrapes every medaid
service of the compose file on the port they serve metrics on, Kubernetes pods carry scrape
annotations that match their metrics port, and the `make up` scrape config reads the targets file
the topology writes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from medaid import topology
from medaid.common import metrics
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "medaid.json"
COMPOSE = DEPLOY / "docker-compose.yml"
# Labels Prometheus adds to every series (the scrape configs' relabelling), besides the metrics' own.
TARGET_LABELS = {"service", "instance", "job"}


def exported() -> dict[str, set[str]]:
    """Every medaid series name the processes can export, with its labels."""
    assert metrics.RPC_REQUESTS  # the module's metrics are registered on import
    out: dict[str, set[str]] = {}
    own = [c for collectors in metrics.OWN.values() for c in collectors]  # registered by their service alone
    for collector in [*REGISTRY._names_to_collectors.values(), *own]:  # noqa: SLF001 - no public listing
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if not family.name.startswith("medaid_"):
                continue
            labels = set(getattr(collector, "_labelnames", ()))
            if family.type == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            elif family.type == "counter":
                out[family.name + "_total"] = labels
            else:
                out[family.name] = labels
    return out


def exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_the_dashboard_asks_only_for_exported_metrics_and_labels():
    known = exported()
    used: set[str] = set()
    for expr in exprs():
        names = set(re.findall(r"\bmedaid_[a-z_]+", expr))
        assert names, expr
        for name in names:
            assert name in known, f"{name} is not exported: {expr}"
        used |= names
        labels = {lbl.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for lbl in group.split(",")}
        labels |= set(re.findall(r"(\w+)\s*!?=~?\s*\"", expr))
        allowed = set().union(*(known[n] for n in names)) | TARGET_LABELS
        assert labels <= allowed, f"{sorted(labels - allowed)} are no labels of {sorted(names)}: {expr}"
    # What the issue asks the dashboard to show: throughput, p50/p99, refusals, money in flight, recovery.
    assert {"medaid_gateway_messages_total", "medaid_gateway_duration_seconds_bucket", "medaid_rpc_requests_total",
            "medaid_rpc_duration_seconds_bucket", "medaid_wallet_money_in_flight_fen",
            "medaid_recovery_actions_total"} <= used
    assert any("histogram_quantile(0.99" in e for e in exprs()) and any("histogram_quantile(0.5" in e for e in exprs())
    assert any('infcode="-1"' in e and "reason" in e for e in exprs())
    # Money settled is shown net of reversals (counters never go down: reversals have their own).
    assert any(e.startswith("(sum by (source) (rate(medaid_settled_fen_total") and "- (sum by (source) "
               "(rate(medaid_reversed_fen_total" in e for e in exprs())
    # Failed recovery / maintenance passes (registries and wallets alike) have a panel of their own.
    assert any('action="pass_failed"' in e and "by (service)" in e for e in exprs())


def test_compose_runs_prometheus_and_grafana_on_every_medaid_service():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    medaid = {n for n, s in services.items() if s.get("image", "").split(":")[0] == "medaid"}
    port = int(compose["x-env"]["MEDAID_METRICS_PORT"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    (sd,) = prom["scrape_configs"][0]["dns_sd_configs"]
    assert set(sd["names"]) == medaid and sd["port"] == port
    assert any(r["target_label"] == "service" for r in prom["scrape_configs"][0]["relabel_configs"])
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which is missing"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    dash = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert datasource["datasources"][0]["uid"] == var["current"]["value"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
                out.append((doc["metadata"]["name"], doc["spec"]["template"]))
    return out


def test_kubernetes_pods_carry_scrape_annotations_for_their_metrics_port():
    config = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "config.yaml").read_text())
              if d["metadata"]["name"] == "medaid-common"][0]
    port = int(config["data"]["MEDAID_METRICS_PORT"])
    medaid = [(n, t) for n, t in pod_templates() if n != "redis"]
    assert {n for n, _ in medaid} == {"registry-13", "registry-11", "registry-62", "registry-35", "wallet", "router",
                                      "gateway", "console"}
    for name, template in medaid:
        ann = template["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics", name
        assert int(ann["prometheus.io/port"]) == port, name
        (container,) = template["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"], name


def test_the_make_up_scrape_config_reads_the_targets_file_the_topology_writes():
    config_file = DEPLOY / "prometheus" / "make-up.yml"
    prom = yaml.safe_load(config_file.read_text())
    (sd,) = prom["scrape_configs"][0]["file_sd_configs"]
    (path,) = sd["files"]
    assert (config_file.parent / path).resolve() == (ROOT / topology.TARGETS_FILE).resolve()


def metrics_table() -> dict[str, str]:
    """docs/operations.md's metrics table: each metric name's row (its labels and its `what`)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `medaid_") else []
        for name in re.findall(r"`(medaid_\w+)`", cells[0] if cells else ""):
            rows[name] = " | ".join(cells[2:])
    return rows


def test_the_docs_list_exactly_the_label_values_the_code_records():
    """Each closed label's values are types in medaid.common.metrics (mypy holds every recording to
    them); the metrics table lists exactly those, no more, no fewer."""
    rows, known = metrics_table(), exported()
    assert set(rows) == exported_families(), "the table and the exported metrics differ"
    for name, labels in metrics.CLOSED_LABELS.items():
        row = rows[name]
        values = set().union(*labels.values())
        mentioned = {v for v in re.findall(r"`([A-Za-z_]+)`", row)  # less the label and metric names
                     if not v.startswith("medaid_")} - known[name]
        assert values <= mentioned, f"{name}: {sorted(values - mentioned)} are not documented"
        assert mentioned - values <= NOT_VALUES, f"{name}: {sorted(mentioned - values - NOT_VALUES)} are never recorded"
    action = rows["medaid_recovery_actions_total"]
    registry = re.search(r"registry recovery passes \(([^)]*)\)", action)
    wallet = re.search(r"wallet maintenance \(([^)]*)\)", action)
    assert registry and set(re.findall(r"`(\w+)`", registry[1])) == set(get_args(metrics.RegistryRecovery))
    assert wallet and set(re.findall(r"`(\w+)`", wallet[1])) == set(get_args(metrics.WalletMaintenance))


# What a row may name in backquotes besides its label values: the record fields a reason comes from.
NOT_VALUES = {"helper_reason", "wallet_reason"}


def exported_families() -> set[str]:
    """The metric names as the table writes them (a counter with its `_total`, a histogram bare)."""
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported()}


def test_grafana_loads_the_dashboard_where_compose_mounts_it_and_every_service_serves_the_scraped_port():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    target = mounts["./grafana/medaid.json"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/medaid.yml").read_text())["providers"][0]
    assert Path(target).parent == Path(provider["options"]["path"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == target
    prom = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    (sd,) = prom["scrape_configs"][0]["dns_sd_configs"]
    for name in sd["names"]:
        env = services[name].get("environment") or {}
        assert str(env.get("MEDAID_METRICS_PORT")) == str(sd["port"]), f"{name} serves metrics elsewhere"


def test_the_documented_kubernetes_scrape_job_finds_every_pod_and_names_its_service():
    """The job docs/operations.md gives for a Prometheus in the cluster: it keeps the annotated pods, scrapes
    the annotated port and takes `service` from a pod label that names the service as compose does."""
    text = (ROOT / "docs" / "operations.md").read_text()
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kubernetes_sd_configs" in b]
    (job,) = yaml.safe_load(snippet)
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["medaid"]
    relabel = {r.get("target_label", r.get("action")): r for r in job["relabel_configs"]}
    (label,) = relabel["service"]["source_labels"]
    pod_label = label.removeprefix("__meta_kubernetes_pod_label_")
    ns = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "namespace.yaml").read_text()) if d][0]
    assert ns["metadata"]["name"] == "medaid"
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, template in pod_templates():
        if name == "redis":
            continue
        labels = {re.sub(r"[^A-Za-z0-9_]", "_", k): v for k, v in template["metadata"]["labels"].items()}
        assert labels.get(pod_label) == name and name in compose, name  # the same `service` as in compose
        ann = template["metadata"]["annotations"]
        assert relabel["keep"]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        assert re.fullmatch(relabel["keep"]["regex"], ann["prometheus.io/scrape"])
        address = f"10.0.0.7:7000;{ann['prometheus.io/port']}"
        port_rule = relabel["__address__"]
        assert re.sub(port_rule["regex"], port_rule["replacement"].replace("$", "\\"),
                      address) == f"10.0.0.7:{ann['prometheus.io/port']}"


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_the_dashboard_asks_only_for_label_values_the_code_records():
    """A closed label compared with a value no recording gives (a misspelt action) is a panel that stays
    empty whatever happens: caught here, not in an outage."""
    for expr in exprs():
        for name in set(re.findall(r"\bmedaid_[a-z_]+", expr)):
            closed = metrics.CLOSED_LABELS.get(name.removesuffix("_bucket").removesuffix("_sum")
                                               .removesuffix("_count"), {})
            for label, value in re.findall(r"(\w+)\s*!?=\s*\"([^\"]*)\"", expr):
                if label in closed:
                    assert value in closed[label], f"{label}={value!r} is never recorded: {expr}"


def test_the_overview_counts_finished_recovery_work_only_and_wallet_refusals_show_by_service():
    """The overview's "Recovery actions" says what recovery finished or dropped: an entry left for later
    (`deferred`, and among those `wallet_refused`, counted again every pass while a registry's certificate
    is wrong) or a failed pass is no work done. A registry the wallet refuses (the runbook of
    docs/operations.md) shows by service beside the failed passes."""
    actions = metrics.CLOSED_LABELS["medaid_recovery_actions_total"]["action"]
    assert metrics.UNFINISHED_ACTIONS < actions
    stat = next(p for p in _panels() if p["title"].startswith("Recovery actions"))
    (expr,) = [t["expr"] for t in stat["targets"]]
    excluded = set(re.findall(r"action\s*!=\s*\"(\w+)\"", expr))
    assert "action=" not in expr.replace("action!=", ""), expr  # exclusions only: a new finishing action counts
    counted = actions - excluded
    assert counted and counted.isdisjoint(metrics.UNFINISHED_ACTIONS), sorted(counted & metrics.UNFINISHED_ACTIONS)
    assert any('action="wallet_refused"' in e and "by (service)" in e for e in exprs())


ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Series Prometheus makes itself (per target), which an alert may ask for besides the services' own.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": set()}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset"}
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "vector",
                    "max_over_time", "min_over_time", "absent", "time"}
# What a runbook row's anchor looks like in docs/operations.md.
RUNBOOK_ANCHOR = re.compile(r'<a id="((?:alert|runbook)-[a-z0-9-]+)"></a>')


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _label_values() -> dict[str, set[str]]:
    """The values of the open labels an alert may compare: gRPC methods and codes, reasons, infnos, jobs."""
    import grpc
    from medaid.gateway.openapi import TRANSACTIONS
    from medaid.gateway.reasons import REASON_ZH
    from medaid.registry.v1 import family_pb2, premium_pb2, registry_pb2
    from medaid.router.v1 import router_pb2
    from medaid.wallet.v1 import wallet_pb2

    methods = {f"{svc.name}/{m.name}" for mod in (registry_pb2, family_pb2, premium_pb2, router_pb2, wallet_pb2)
               for svc in mod.DESCRIPTOR.services_by_name.values() for m in svc.methods}
    jobs = {c["job_name"] for f in ("compose.yml", "make-up.yml")
            for c in yaml.safe_load((DEPLOY / "prometheus" / f).read_text())["scrape_configs"]}
    return {"method": methods, "code": {c.name for c in grpc.StatusCode}, "reason": set(REASON_ZH),
            "infno": set(TRANSACTIONS), "job": jobs}


def test_the_alerts_ask_only_for_exported_metrics_labels_and_values():
    """Every series an alert selects is one the services export (or Prometheus's own `up`), every label
    it matches or groups by is one of that series (or a target label), and every value it compares a
    label with is one the code records: a misspelt name or value is an alert that never fires."""
    known = {**exported(), **PROMETHEUS_SERIES}
    open_values = _label_values()
    for rule in alert_rules():
        expr = re.sub(r"\s+", " ", rule["expr"])
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        bare = re.sub(r'"[^"]*"', '""', expr)  # label values aside
        idents = set(re.findall(r"\b[a-zA-Z_][\w:]*\b", bare))
        names = idents & set(known)
        assert names, f"{rule['alert']} selects no known series: {expr}"
        grouped = {lbl.strip() for g in re.findall(r"\b(?:by|on|without|ignoring) \(([^)]*)\)", expr)
                   for lbl in g.split(",") if lbl.strip()}
        matchers = re.findall(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", expr)
        # Every other word is a PromQL function or keyword, a duration or a label: a misspelt series is not.
        words = idents - names - PROMQL_WORDS - PROMQL_FUNCTIONS - grouped - {label for label, _, _ in matchers}
        assert not {w for w in words if not re.fullmatch(r"\d+[smhdwy]", w)}, \
            f"{rule['alert']}: {sorted(words)} are no series of the services: {expr}"
        allowed = set().union(*(known[n] for n in names)) | TARGET_LABELS
        assert grouped | {label for label, _, _ in matchers} <= allowed, f"{rule['alert']}: labels not exported: {expr}"
        for label, op, value in matchers:
            values = {v for v in value.split("|")} if op in ("=~", "!~") else {value}
            closed = set().union(*(metrics.CLOSED_LABELS.get(re.sub(r"_(bucket|sum|count)$", "", n), {})
                                   .get(label, set()) for n in names))
            accepted = closed or open_values.get(label)
            assert accepted is not None, f"{rule['alert']}: no values known for {label}"
            if op in ("=~", "!~"):  # an alternative may be a pattern: it must match a value the code records
                values = {v for v in values if not any(re.fullmatch(v, known_value) for known_value in accepted)}
                assert not values, f"{rule['alert']}: {label} {sorted(values)} matches nothing recorded"
            assert values <= accepted, f"{rule['alert']}: {label} {sorted(values - accepted)} is never recorded"


def _anchor(url: str) -> str:
    page, _, anchor = url.partition("#")
    assert page == "docs/operations.md" and anchor, url
    return anchor


def test_every_runbook_row_that_needs_a_person_has_its_alert():
    """docs/operations.md's runbook rows (an `alert-…` or `runbook-…` anchor each) and the alerts name
    each other one to one: no alert without a row saying what to do, no row an operator is never
    called to. And what the runbook says needs a person is alerted on."""
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = RUNBOOK_ANCHOR.findall(text)
    assert len(rows) == len(set(rows))
    named = [_anchor(r["annotations"]["runbook_url"]) for r in alert_rules()]
    assert set(named) == set(rows), (sorted(set(rows) - set(named)), sorted(set(named) - set(rows)))
    section = text.split("\n### Alerts and what to do\n", 1)[1].split("\n## ", 1)[0]
    for rule in alert_rules():  # each alert's row in the table names it
        assert f"`{rule['alert']}`" in section or _anchor(rule["annotations"]["runbook_url"]).startswith("runbook-")
    exprs_ = {r["alert"]: re.sub(r"\s+", " ", r["expr"]) for r in alert_rules()}
    wanted = ['action="pass_failed"', 'action="wallet_refused"', 'reason="WALLET_REFUSED_REGISTRY"',
              'reason="WALLET_CALL_REFUSED"', "medaid_wallet_overdue_in_flight_fen", 'action="deferred"',
              'reason="STORE_UNAVAILABLE"', "medaid_redis_errors_total", 'up{job="medaid"}']
    for fragment in wanted:
        assert any(fragment in e for e in exprs_.values()), f"no alert on {fragment}"
    assert any('method="RouterService/Settle"' in e and " / " in e and "code" in e
               for e in exprs_.values()), "no alert on the settlements' error rate"
    assert any(e.startswith("histogram_quantile(0.99,") and 'infno="2207"' in e for e in exprs_.values())


def test_the_store_alert_asks_for_an_outage_that_lasts_not_for_one_reconnect():
    """MedaidStoreUnavailable asks for the processes' health (NOT_SERVING while their Redis does not
    answer), and every count of failures in it covers less time than the alert's `for`: one failed round
    trip (a reconnect the client's retry recovers) leaves the expression before `for` has passed, so only
    failures that recur page anyone. A window as long as `for` kept one error in view for the whole of it."""
    rule = next(r for r in alert_rules() if r["alert"] == "MedaidStoreUnavailable")
    expr = re.sub(r"\s+", " ", rule["expr"])
    assert "min by (service) (medaid_health_serving) == 0" in expr, expr
    minutes = {"s": 1 / 60, "m": 1, "h": 60}
    for_min = float(rule["for"][:-1]) * minutes[rule["for"][-1]]
    windows = [float(n) * minutes[u] for n, u in re.findall(r"\[(\d+)([smh])\]", expr)]
    assert windows and all(w < for_min for w in windows), (rule["for"], expr)


def test_compose_make_up_and_kubernetes_load_the_alerts():
    for name in ("compose.yml", "make-up.yml"):
        prom = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
        assert prom["rule_files"] == ["alerts.yml"], name
    assert (DEPLOY / "prometheus" / "make-up.yml").parent / "alerts.yml" == ALERTS
    # compose: the rules file lies beside the configuration, where rule_files reads it from
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    config_file = Path(mounts["./prometheus/compose.yml"])
    assert "--config.file=" + str(config_file) in services["prometheus"]["command"]
    assert Path(mounts["./prometheus/alerts.yml"]) == config_file.parent / "alerts.yml"
    # Kubernetes: a ConfigMap holding the same file, in the medaid namespace
    kustomization = yaml.safe_load((DEPLOY / "prometheus" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "medaid"
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["alerts.yml"] and generator["name"] == "medaid-prometheus-alerts"
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True


# Reasons one service answers of its own (its Redis, the wallet refusing this registry): the router
# passes a registry's refusal on unchanged and counts its reason under its own methods as well.
OWN_REASONS = ("STORE_UNAVAILABLE", "WALLET_REFUSED_REGISTRY", "WALLET_CALL_REFUSED")


def test_an_alert_on_a_services_own_reason_leaves_out_what_the_router_passes_on(national, start_router):
    """A registry's Redis down (or its certificate refused by the wallet) makes its calls answer
    STORE_UNAVAILABLE (WALLET_REFUSED_REGISTRY); the router passes those answers on and counts the
    same reason for each of its own calls. An alert `by (service)` on the reason alone then also says
    "router: its Redis does not answer", sending the operator to a Redis that is fine: such an alert
    counts the service's own methods only (not `RouterService/…`)."""
    import grpc
    from medaid.router.v1 import router_pb2 as pb
    from support import new_id

    router = start_router().stub
    method, code, reason = "RouterService/QueryPerson", "NOT_FOUND", "PERSON_NOT_FOUND"
    before = metrics.RPC_REQUESTS.labels(method, code, reason)._value.get()  # noqa: SLF001 - the child's count
    try:
        router.QueryPerson(pb.QueryPersonRequest(
            msgid="H1301010000120261122120000" + "9001", mdtrt_cert_type="02", mdtrt_cert_no=new_id(),
            institution=pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
    # the registry's reason, counted by the router under its own method (once its handler has returned)
    deadline = time.monotonic() + 5
    while metrics.RPC_REQUESTS.labels(method, code, reason)._value.get() == before and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.01)
    assert metrics.RPC_REQUESTS.labels(method, code, reason)._value.get() == before + 1  # noqa: SLF001
    for rule in alert_rules():
        expr = re.sub(r"\s+", " ", rule["expr"])
        for selector in re.findall(r"medaid_rpc_requests_total\{([^}]*)\}", expr):
            if any(f'reason="{r}"' in selector for r in OWN_REASONS):
                assert 'method!~"RouterService/.*"' in selector, f"{rule['alert']} counts the router: {expr}"


def _selectors(expr: str, metric: str) -> list[list[tuple[str, str, str]]]:
    """The label matchers of each selector of `metric` in a PromQL expression."""
    return [re.findall(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", body)
            for body in re.findall(re.escape(metric) + r"\{([^}]*)\}", expr)]


def _selects(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    """Whether a series with `labels` is selected by these matchers (PromQL: anchored regular expressions)."""
    for label, op, value in matchers:
        got = labels.get(label, "")
        if not {"=": got == value, "!=": got != value, "=~": re.fullmatch(value, got) is not None,
                "!~": re.fullmatch(value, got) is None}[op]:
            return False
    return True


def _settle_failure_counted(labels: dict[str, str]) -> bool:
    """Whether MedaidSettlementErrors counts a series of medaid_rpc_requests_total among the failures
    (its numerator: the selectors before the division)."""
    rule = next(r for r in alert_rules() if r["alert"] == "MedaidSettlementErrors")
    numerator = re.sub(r"\s+", " ", rule["expr"]).split(" / ", 1)[0]
    return any(_selects(m, labels) for m in _selectors(numerator, "medaid_rpc_requests_total"))


# Codes of a 2207 that are no failure besides a rule's refusal (router/claims.py REFUSED_BY_RULE): a reused
# msgid, and what the caller brought on itself (no credentials, over its rate, gave up).
SETTLE_NOT_FAILED = ("ALREADY_EXISTS", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "CANCELLED")


def test_the_settlement_alert_counts_every_failure_that_is_not_a_rules_refusal(national, loop_thread, redis_server):
    """A 2207 that fails for any reason but a rule's refusal counts towards MedaidSettlementErrors,
    whatever its code: a registry of another release (here the router's province 13 is a process that
    serves no RegistryService) answers UNIMPLEMENTED with no ErrorInfo, which the router passes on with
    that code and the reason DOWNSTREAM_ERROR; every 2207 of the province fails and the alert must see
    it. So must a registry's INTERNAL_ERROR (code UNKNOWN) and every answer that says a service further
    down answered amiss (errors.ANSWERED_AMISS) with any code; a rule's refusal and a success must not."""
    import grpc
    import redis.asyncio as aioredis
    from medaid.common import errors
    from medaid.common.server import start_server
    from medaid.common.v1 import common_pb2 as cpb
    from medaid.directory import Directory
    from medaid.registry.client import Registries
    from medaid.router.claims import REFUSED_BY_RULE
    from medaid.router.service import Router
    from medaid.router.servicer import register as register_router
    from medaid.router.v1 import router_pb2 as pb
    from medaid.router.v1 import router_pb2_grpc
    from support import EMPLOYEE, credit, enroll

    hb = national.reg("13")
    patient = enroll(hb, itype=EMPLOYEE)
    credit(hb, patient, 10_000)

    async def boot() -> tuple[Router, Any, Any]:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        registries = Registries({"13": f"127.0.0.1:{national.wallet.port}"})  # no RegistryService there
        router = Router(Directory(client), registries, wallet_address=f"127.0.0.1:{national.wallet.port}",
                        clock=national.clock)
        running = await start_server(lambda s: register_router(s, router), port=0)
        return router, running, client

    router, running, client = loop_thread.run(boot())
    series = ("RouterService/Settle", "UNIMPLEMENTED", "DOWNSTREAM_ERROR")
    before = metrics.RPC_REQUESTS.labels(*series)._value.get()  # noqa: SLF001 - the child's count
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Settle(pb.SettleRequest(
                    msgid="H13010100001202611221000009901", institution=pb.Institution(
                        fixmedins_code="H13010100001", mdtrtarea_admvs="130100"),
                    input=pb.SettleInput(psn_no=patient, psn_part_amt_fen=1_000, acct_used_flag="1",
                                         category=cpb.CATEGORY_OUTPATIENT)), timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value
            assert errors.error_info(raised.value).reason == "DOWNSTREAM_ERROR"
        deadline = time.monotonic() + 5
        while metrics.RPC_REQUESTS.labels(*series)._value.get() == before and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)
        assert metrics.RPC_REQUESTS.labels(*series)._value.get() == before + 1  # noqa: SLF001
    finally:
        async def shutdown() -> None:
            await running.server.stop(0)
            await router.close()
            await client.aclose()
        loop_thread.run(shutdown())
    # Every Settle series this process recorded: the failing one above among them.
    recorded = [dict(s.labels) for m in REGISTRY.collect() if m.name == "medaid_rpc_requests"
                for s in m.samples if s.name == "medaid_rpc_requests_total"
                and s.labels.get("method") == "RouterService/Settle"]
    assert dict(zip(("method", "code", "reason"), series, strict=True)) in recorded
    for labels in recorded:
        failed = labels["code"] not in {"OK", *SETTLE_NOT_FAILED, *(c.name for c in REFUSED_BY_RULE)} \
            or labels["reason"] in errors.ANSWERED_AMISS
        assert _settle_failure_counted(labels) == failed, labels
    settle = {"method": "RouterService/Settle"}
    failures = [("UNIMPLEMENTED", "DOWNSTREAM_ERROR"), ("INVALID_ARGUMENT", "DOWNSTREAM_ERROR"),
                ("FAILED_PRECONDITION", "DOWNSTREAM_ERROR"), ("UNKNOWN", "INTERNAL_ERROR"), ("UNKNOWN", ""),
                ("INTERNAL", "INTERNAL_ERROR"), ("DEADLINE_EXCEEDED", ""), ("UNAVAILABLE", "STORE_UNAVAILABLE"),
                ("UNAVAILABLE", "REGISTRY_UNAVAILABLE"), ("DATA_LOSS", ""),
                *((code, reason) for reason in errors.ANSWERED_AMISS for code in ("UNAVAILABLE", "NOT_FOUND"))]
    for code, reason in failures:
        assert _settle_failure_counted({**settle, "code": code, "reason": reason}), (code, reason)
    refusals = [("OK", ""), ("FAILED_PRECONDITION", "INSUFFICIENT_BALANCE"), ("INVALID_ARGUMENT", "INVALID_MSGID"),
                ("NOT_FOUND", "PERSON_NOT_FOUND"), ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED"),
                ("UNAUTHENTICATED", "INSTITUTION_UNAUTHENTICATED"), ("RESOURCE_EXHAUSTED", "RATE_LIMITED"),
                ("PERMISSION_DENIED", "INSTITUTION_NOT_ALLOWED")]
    for code, reason in refusals:
        assert not _settle_failure_counted({**settle, "code": code, "reason": reason}), (code, reason)
    # Other methods' failures are not the settlements' (the numerator and the denominator alike).
    assert not _settle_failure_counted({"method": "RouterService/Reverse", "code": "UNKNOWN", "reason": ""})

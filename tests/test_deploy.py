"""The deployment files (deploy/Dockerfile, deploy/docker-compose.yml, deploy/k8s/) against the code.

No container engine or cluster runs here, so these tests read the files: every manifest is checked
against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), and every
cross-reference is checked by hand — Service selectors and ports against the pods they select, probes
against container ports, ConfigMaps / Secrets / keys that are referenced, every MEDAID_* variable
against the options of the service it is given to (the OPTIONS tuples of medaid.<svc>.__main__),
service addresses against the Services / compose services they name, the policy ConfigMaps against
deploy/policies byte for byte, compose images, commands and depends_on, the Dockerfile's COPY sources,
pins and command modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml
from medaid.common import config, rpc
from medaid.common.config import COMMON_OPTIONS
from medaid.common.redis_client import cluster_seeds
from medaid.common.redis_server import RedisServer, redis_server_binary, server_version
from medaid.common.server import LIVENESS
from medaid.console import operators
from medaid.gateway.web import HEALTH_PATH, LIVENESS_PATH
from medaid.registry.client import parse_addresses

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
POLICIES = DEPLOY / "policies"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SERVICES = ("medaid.registry", "medaid.wallet", "medaid.router", "medaid.gateway", "medaid.console")
# Services that speak HTTP (health: GET /healthz), the rest gRPC.
HTTP_MODULES = frozenset({"medaid.gateway", "medaid.console"})
# The oldest Kubernetes the manifests are written for (gRPC probes are GA since 1.27) and the newest known.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
GRPC_PORT, HTTP_PORT, METRICS_PORT = 7000, 8080, 9100
WORKLOADS = ("Deployment", "StatefulSet")


def env_name(option: str) -> str:
    return "MEDAID_" + option.upper()


def options_of(module: str) -> set[str]:
    """MEDAID_* variables the service reads: its OPTIONS tuple."""
    return {env_name(o.name) for o in importlib.import_module(module + ".__main__").OPTIONS}


def assert_valid_config(name: str, module: str, values: dict[str, Any]) -> None:
    """The values pass the service's own start-up validation (typed options, medaid.common.config)."""
    options = importlib.import_module(module + ".__main__").OPTIONS
    flags = {o.env: o.flag for o in options}
    argv = [a for k, v in values.items() if k in flags for a in (flags[k], str(v))]
    try:
        config.load(module, options, argv)
    except config.ConfigError as exc:
        pytest.fail(f"{name}: {exc}")


def module_exists(module: str) -> bool:
    """`python -m module` would run something: the package has a __main__, or it is a plain module."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    return spec.submodule_search_locations is None or importlib.util.find_spec(module + ".__main__") is not None


# --- loading ------------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and doc, f"{path.name}: an empty or non-mapping document"
            doc["__file__"] = path.name
            docs.append(doc)
    return docs


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__file__"}


def by_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in by_kind(docs, kind):
        name = d["metadata"]["name"]
        assert name not in out, f"two {kind}s named {name}"
        out[name] = d
    return out


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec(workload)["containers"]


def medaid_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for w in by_kind(docs, *WORKLOADS):
        for c in containers(w):
            if c["image"].split(":")[0] == "medaid":
                yield w, c


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(c: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every variable the container gets: envFrom ConfigMaps first, then env (which wins)."""
    out: dict[str, Any] = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        assert ref is not None, f"{c['name']}: only ConfigMaps are used with envFrom, got {src}"
        out.update(configmaps[ref["name"]]["data"])
    for var in c.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
        else:
            out[var["name"]] = var["valueFrom"]
    return out


def resolve(value: Any, configmaps: dict[str, dict[str, Any]], secrets: dict[str, dict[str, Any]]) -> str:
    if isinstance(value, str):
        return value
    if "configMapKeyRef" in value:
        ref = value["configMapKeyRef"]
        return str(configmaps[ref["name"]]["data"][ref["key"]])
    ref = value["secretKeyRef"]
    return str(secrets[ref["name"]]["stringData"][ref["key"]])


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return k8s_docs()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


# --- Kubernetes: schemas ----------------------------------------------------------------------------


def test_every_manifest_is_valid_against_the_kubernetes_schemas(docs):
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet",
                                         "PodDisruptionBudget"}
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(clean(doc), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['__file__']}: {doc['kind']} {doc['metadata'].get('name')} is not "
                                     f"valid for Kubernetes {version}: {exc.message} at "
                                     f"{'/'.join(map(str, exc.path))}") from None


def test_kustomization_lists_every_manifest_and_names_the_image():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "medaid"
    assert sorted(kust["resources"]) == [p.name for p in k8s_files()]
    assert [i["name"] for i in kust["images"]] == ["medaid"]


# --- Kubernetes: cross-references ---------------------------------------------------------------------


def test_every_service_selects_a_workload_and_its_ports(docs):
    workloads = by_kind(docs, *WORKLOADS)
    for svc in by_kind(docs, "Service"):
        name, spec = svc["metadata"]["name"], svc["spec"]
        targets = [w for w in workloads if selects(spec["selector"], pod_labels(w))]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} workloads"
        ports = {p.get("name"): p["containerPort"] for c in containers(targets[0]) for p in c.get("ports", [])}
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            number = ports.get(target) if isinstance(target, str) else target
            assert number in ports.values(), f"Service {name}: targetPort {target} is no container port"
            if spec.get("clusterIP") == "None":
                # Headless: clients connect to the pods' own addresses, so the port must be the pods' port.
                assert port["port"] == number, f"headless Service {name}: port {port['port']} != container {number}"
    # Every workload is reachable through a Service of its own name (the addresses use those names).
    services = named(docs, "Service")
    for w in workloads:
        assert w["metadata"]["name"] in services, f"{w['kind']} {w['metadata']['name']} has no Service"
    for sts in by_kind(docs, "StatefulSet"):
        assert services[sts["spec"]["serviceName"]]["spec"].get("clusterIP") == "None"


def test_workload_selectors_match_their_own_pods_and_are_not_shared(docs):
    workloads = by_kind(docs, *WORKLOADS)
    for w in workloads:
        sel = w["spec"]["selector"]["matchLabels"]
        assert selects(sel, pod_labels(w)), f"{w['metadata']['name']}: selector does not match its pod labels"
        others = [o["metadata"]["name"] for o in workloads if o is not w and selects(sel, pod_labels(o))]
        assert not others, f"{w['metadata']['name']}'s selector also matches {others}"
        for spread in pod_spec(w).get("topologySpreadConstraints", []):
            assert selects(spread["labelSelector"]["matchLabels"], pod_labels(w))
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        matched = [w for w in workloads if selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(matched) == 1, f"PodDisruptionBudget {pdb['metadata']['name']} matches {len(matched)} workloads"
        assert matched[0]["spec"]["replicas"] > pdb["spec"]["minAvailable"], pdb["metadata"]["name"]


def test_probes_resources_and_replicas(docs):
    for w in by_kind(docs, *WORKLOADS):
        name = w["metadata"]["name"]
        assert isinstance(w["spec"].get("replicas"), int), f"{name}: replicas not set"
        for c in containers(w):
            ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"{name}/{c['name']}: resources.{kind}"
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = c.get(probe_name)
                assert probe is not None, f"{name}/{c['name']}: no {probe_name}"
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        assert (ports.get(port) if isinstance(port, str) else port) in ports.values(), \
                            f"{name}/{c['name']}: {probe_name} port {port} is no container port"
            # Readiness and liveness ask different questions (serving now? / alive at all?).
            handler = {k: v for k, v in c["readinessProbe"].items() if k in ("grpc", "httpGet", "tcpSocket", "exec")}
            assert handler != {k: c["livenessProbe"].get(k) for k in handler}, f"{name}: the same probe twice"
            if c["image"].split(":")[0] != "medaid":
                continue
            module = c["args"][0]
            if module == "medaid.gateway":
                # Readiness (/healthz) follows Redis and the router; liveness (/livez) does not: an outage
                # must take the gateways out of rotation, not restart them.
                assert c["readinessProbe"]["httpGet"]["path"] == HEALTH_PATH
                assert c["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH, "the gateway's liveness must be /livez"
                assert c["readinessProbe"]["httpGet"]["port"] == c["livenessProbe"]["httpGet"]["port"] == "http"
                assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
            elif module in HTTP_MODULES:
                assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
                # The console's /healthz asks its session store (Redis): an outage of it must not restart
                # the consoles.
                assert "httpGet" not in c["livenessProbe"], f"{name}: liveness must not depend on other services"
                assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
            else:
                assert c["readinessProbe"]["grpc"]["port"] == c["livenessProbe"]["grpc"]["port"] == GRPC_PORT
                # Readiness ("") follows Redis; liveness asks the name that does not (a Redis outage must
                # not restart every pod).
                assert "service" not in c["readinessProbe"]["grpc"], f"{name}: readiness must ask the server's status"
                assert c["livenessProbe"]["grpc"].get("service") == LIVENESS, f"{name}: liveness must ask {LIVENESS!r}"
                assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    deployments = named(docs, "Deployment")
    assert deployments["registry-13"]["spec"]["replicas"] >= 2 and deployments["wallet"]["spec"]["replicas"] >= 2


def test_referenced_configmaps_secrets_and_keys_exist(docs):
    configmaps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    for w in by_kind(docs, *WORKLOADS):
        name = w["metadata"]["name"]
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{name}: volume of missing ConfigMap {v}"
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{name}: volume of missing Secret {v}"
        for c in containers(w):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{name}: mount of unknown volume {m['name']}"
            for src in c.get("envFrom", []):
                for kind, pool in (("configMapRef", configmaps), ("secretRef", secrets)):
                    if kind in src:
                        assert src[kind]["name"] in pool, f"{name}: envFrom missing {src}"
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = configmaps.get(ref["configMapKeyRef"]["name"])
                    assert cm is not None and ref["configMapKeyRef"]["key"] in cm["data"], f"{name}: {var}"
                if "secretKeyRef" in ref:
                    sec = secrets.get(ref["secretKeyRef"]["name"])
                    assert sec is not None and ref["secretKeyRef"]["key"] in sec["stringData"], f"{name}: {var}"


def test_medaid_env_vars_are_real_options_and_the_wiring_is_complete(docs):
    configmaps, secrets, services = named(docs, "ConfigMap"), named(docs, "Secret"), named(docs, "Service")
    deployments = named(docs, "Deployment")
    seen_modules = set()
    for w, c in medaid_containers(docs):
        name = w["metadata"]["name"]
        module = c["args"][0]
        assert module in SERVICES, f"{name}: {module} is not a medaid service"
        assert c.get("command") is None, f"{name}: the image's entrypoint (python -m) must stay"
        seen_modules.add(module)
        env = container_env(c, configmaps)
        medaid_vars = {k for k in env if k.startswith("MEDAID_")}
        unknown = medaid_vars - options_of(module)
        assert not unknown, f"{name}: {sorted(unknown)} are no options of {module}"
        values = {k: resolve(v, configmaps, secrets) for k, v in env.items()}
        assert_valid_config(name, module, values)
        port = c["ports"][0]["containerPort"]
        assert values["MEDAID_HOST"] == "0.0.0.0" and int(values["MEDAID_PORT"]) == port, name
        if "MEDAID_REDIS_URL" in options_of(module):
            assert re.match(r"^(redis|rediss)(\+cluster)?://", values["MEDAID_REDIS_URL"]), name
        required = {"medaid.registry": {"MEDAID_PROVINCE", "MEDAID_POLICY_FILE", "MEDAID_WALLET"},
                    "medaid.wallet": {"MEDAID_REGISTRIES", "MEDAID_POLICY_FILE"},
                    "medaid.router": {"MEDAID_REGISTRIES", "MEDAID_WALLET"},
                    "medaid.gateway": {"MEDAID_ROUTER"},
                    "medaid.console": {"MEDAID_REGISTRIES", "MEDAID_WALLET", "MEDAID_OPERATORS",
                                       "MEDAID_SESSION_SECRET", "MEDAID_SESSION_REDIS_URL"}}[module]
        assert required <= medaid_vars, f"{name}: missing {sorted(required - medaid_vars)}"

        addresses = []
        if "MEDAID_REGISTRIES" in values:
            regs = parse_addresses(values["MEDAID_REGISTRIES"])
            assert {f"registry-{p}" for p in regs} == {d for d in deployments if d.startswith("registry-")}
            addresses += [(a, f"registry-{p}") for p, a in regs.items()]
        addresses += [(values[v], s) for v, s in (("MEDAID_WALLET", "wallet"), ("MEDAID_ROUTER", "router"))
                      if v in values]
        for address, target in addresses:
            for replica in rpc.replicas(address):
                host, _, p = replica.removeprefix("dns:///").rpartition(":")
                assert host == target and host in services, f"{name}: {address} should name the Service {target}"
                assert any(sp["port"] == int(p) for sp in services[host]["spec"]["ports"]), f"{name}: {address}"
        if module == "medaid.registry":
            assert name == f"registry-{values['MEDAID_PROVINCE']}", name
        if "MEDAID_POLICY_FILE" in values:
            path = Path(values["MEDAID_POLICY_FILE"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mounts[str(path.parent)])
            assert path.name in configmaps[volume["configMap"]["name"]]["data"], f"{name}: {path} is not mounted"
            if module == "medaid.registry":
                assert path.name.startswith(values["MEDAID_PROVINCE"] + "-"), f"{name}: {path} is another province's"
        if "MEDAID_OPERATORS" in values:
            # The console's operator list comes from a Secret mounted where MEDAID_OPERATORS points, and parses.
            path = Path(values["MEDAID_OPERATORS"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mounts[str(path.parent)])
            item = next(i for i in volume["secret"]["items"] if i["path"] == path.name)
            operators.parse(tomllib.loads(secrets[volume["secret"]["secretName"]]["stringData"][item["key"]])
                            ["operators"])
    assert seen_modules == set(SERVICES)


def test_policy_configmaps_hold_exactly_deploy_policies(docs):
    configmaps = named(docs, "ConfigMap")
    held: dict[str, str] = {}
    for name in ("medaid-province-policies", "medaid-wallet-policy"):
        for key, text in configmaps[name]["data"].items():
            assert key not in held, f"{key} is in two policy ConfigMaps"
            held[key] = text
    files = {p.name: p.read_text(encoding="utf-8") for p in POLICIES.iterdir() if p.is_file()}
    assert sorted(held) == sorted(files)
    for key, text in files.items():
        assert held[key] == text, f"{key} in deploy/k8s/policies.yaml differs from deploy/policies/{key}"
    assert set(configmaps["medaid-province-policies"]["data"]) == {k for k in files if k[:2].isdigit()}


def test_redis_statefulset_persists_with_appendfsync_always(docs):
    redis = named(docs, "StatefulSet")["redis"]
    c = next(containers(redis))
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    assert any(m["mountPath"] == "/data" for m in c["volumeMounts"])
    secret = named(docs, "Secret")["medaid-redis"]["stringData"]["url"]
    assert secret.split("://", 1)[1].split(":")[0] == redis["spec"]["serviceName"]


# --- docker compose ---------------------------------------------------------------------------------


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_services_images_commands_and_dependencies(compose):
    services = compose["services"]
    medaid = {n: s for n, s in services.items() if s.get("image", "").split(":")[0] == "medaid"}
    assert set(medaid) == {"registry-13", "registry-11", "registry-62", "registry-35", "wallet", "router", "gateway",
                           "console"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        if svc.get("deploy", {}).get("replicas", 1) > 1:
            assert "container_name" not in svc, f"{name}: replicas cannot share a container_name"
            assert not any(":" in str(p) for p in svc.get("ports", [])), f"{name}: replicas cannot share a host port"
    for name, svc in medaid.items():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        module = svc["command"][0]
        assert svc["command"] == [module] and module in SERVICES and module_exists(module), name
        if "MEDAID_REDIS_URL" in options_of(module):
            assert "redis" in svc["depends_on"], f"{name} must wait for redis"
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "medaid.healthcheck"] and module_exists("medaid.healthcheck")
        env = compose_env(svc)
        port = int(env["MEDAID_PORT"])
        assert test[4:] == (["http", f"127.0.0.1:{port}"] if module in HTTP_MODULES else
                            ["grpc", f"127.0.0.1:{port}"]), name
    assert medaid["registry-13"]["deploy"]["replicas"] >= 2 and medaid["wallet"]["deploy"]["replicas"] >= 2
    gw_port = compose_env(medaid["gateway"])["MEDAID_PORT"]
    assert any(str(p).endswith(f":{gw_port}") for p in medaid["gateway"]["ports"])
    assert "router" in medaid["gateway"]["depends_on"]
    console = medaid["console"]
    assert {"wallet", "registry-13"} <= set(console["depends_on"])
    mount = next(v for v in console["volumes"] if v.endswith(":/etc/medaid/console/operators.toml:ro"))
    operators.load(COMPOSE.parent / mount.split(":")[0])  # the mounted operator list exists and parses
    assert compose_env(console)["MEDAID_OPERATORS"] == "/etc/medaid/console/operators.toml"


def test_compose_env_vars_are_real_options_and_addresses_name_services(compose):
    services = compose["services"]
    for name, svc in services.items():
        if svc.get("image", "").split(":")[0] != "medaid":
            continue
        module = svc["command"][0]
        env = compose_env(svc)
        unknown = {k for k in env if k.startswith("MEDAID_")} - options_of(module)
        assert not unknown, f"{name}: {sorted(unknown)} are no options of {module}"
        assert_valid_config(name, module, env)
        assert env["MEDAID_HOST"] == "0.0.0.0", name
        if "MEDAID_REDIS_URL" in options_of(module):
            assert env["MEDAID_REDIS_URL"].split("://")[1].split(":")[0] in services
        addresses = []
        if "MEDAID_REGISTRIES" in env:
            regs = parse_addresses(env["MEDAID_REGISTRIES"])
            assert {f"registry-{p}" for p in regs} == {n for n in services if n.startswith("registry-")}
            addresses += [(a, f"registry-{p}") for p, a in regs.items()]
        addresses += [(env[v], s) for v, s in (("MEDAID_WALLET", "wallet"), ("MEDAID_ROUTER", "router")) if v in env]
        for address, target in addresses:
            host, _, port = address.rpartition(":")
            assert host == target and port == compose_env(services[target])["MEDAID_PORT"], f"{name}: {address}"
        if module == "medaid.registry":
            assert name == f"registry-{env['MEDAID_PROVINCE']}"
        if "MEDAID_POLICY_FILE" in env:
            path = Path(env["MEDAID_POLICY_FILE"])
            # The image bakes deploy/policies in at /etc/medaid/policies (see the Dockerfile test).
            assert path.parent == Path("/etc/medaid/policies") and (POLICIES / path.name).is_file(), name
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"


# --- Dockerfile -------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_command_modules_copies_and_pins_exist():
    inst = dockerfile_instructions()
    entrypoint = json.loads(next(v for k, v in inst if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in inst if k == "CMD"))
    assert entrypoint == ["python", "-m"], entrypoint
    assert len(cmd) == 1 and cmd[0] in SERVICES and module_exists(cmd[0])
    for module in SERVICES:
        assert module_exists(module)
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = []
    for word, rest in inst:
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = shlex.split(rest)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the build context"
            assert not any(Path(src).match(pat) or src == pat or src.startswith(pat.rstrip("/") + "/")
                           for pat in ignored), f"COPY {src} is excluded by .dockerignore"
            copied.append(src)
    assert {"pyproject.toml", "protos", "services", "deploy/policies"} <= set(copied)
    env_vars = set()
    for word, rest in inst:
        if word == "ENV":
            env_vars |= {m.group(1) for m in re.finditer(r"(\w+)=", rest)}
    common = {env_name(o.name) for o in COMMON_OPTIONS}
    assert {v for v in env_vars if v.startswith("MEDAID_")} <= common
    # The protoc in the image is the one pyproject pins (generated code must match the runtime).
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    tools_pin = next(p for p in pins if p.startswith("grpcio-tools=="))
    assert tools_pin in DOCKERFILE.read_text()
    exposed = {int(p) for k, v in inst if k == "EXPOSE" for p in v.split()}
    assert exposed == {GRPC_PORT, HTTP_PORT}


# --- the Redis server image -------------------------------------------------------------------------

IMAGE_REF = re.compile(r"^(?P<repo>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})$")


def is_store_image(image: str) -> bool:
    return any(name in image.split("@")[0].split(":")[0] for name in ("redis", "valkey"))


def redis_images(docs: list[dict[str, Any]], compose: dict[str, Any]) -> dict[str, str]:
    """The Redis server of the manifests, by where it is named."""
    found = {f"{w['__file__']}/{w['metadata']['name']}/{c['name']}": c["image"]
             for w in by_kind(docs, *WORKLOADS) for c in containers(w) if is_store_image(c["image"])}
    found |= {f"docker-compose.yml/{name}": svc["image"] for name, svc in compose["services"].items()
              if is_store_image(svc.get("image", ""))}
    return found


def test_every_image_but_medaids_is_pinned_by_digest(docs, compose):
    """Third-party images (the store, Prometheus, Grafana) are named by digest: a tag can be moved."""
    for w in by_kind(docs, *WORKLOADS):
        for c in containers(w):
            if c["image"].split(":")[0] != "medaid":
                assert IMAGE_REF.match(c["image"]), f"{w['metadata']['name']}: {c['image']} has no digest"
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        if image and image.split(":")[0] != "medaid":
            assert IMAGE_REF.match(image), f"docker-compose.yml/{name}: {image} has no digest"


def test_redis_images_are_valkey_pinned_by_digest_on_the_tested_major(docs, compose):
    """The manifests deploy the server major version the suite runs on (the embedded valkey-server of
    `make test`, asked both for its --version and, running, for INFO server), by digest: a tag alone
    can be moved to other bytes."""
    images = redis_images(docs, compose)
    assert images and any(k.startswith("docker-compose.yml/") for k in images) and len(images) >= 2, images
    binary = redis_server_binary()
    major = server_version(binary)[0]
    with RedisServer(appendfsync="no") as server:
        info = redis.Redis(port=server.port).info("server")
    running = str(info.get("valkey_version") or info["redis_version"])
    assert int(running.split(".")[0]) == major, (binary, running)
    assert info.get("server_name") == "valkey", f"the embedded server is not Valkey: {info.get('server_name')}"
    for where, image in images.items():
        ref = IMAGE_REF.match(image)
        assert ref, f"{where}: {image} is not pinned as repo:tag@sha256:<digest>"
        assert ref["repo"] in ("valkey/valkey", "docker.io/valkey/valkey"), f"{where}: {image} is not Valkey"
        assert int(ref["tag"].split(".")[0]) == major, f"{where}: {image} is not Valkey {major} (tests run on it)"
    assert len(set(images.values())) == 1, f"compose and Kubernetes deploy different servers: {images}"


# --- Redis AUTH and the NetworkPolicy ------------------------------------------------------------------


def mounted_secret_file(w: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file `path` in container `c` of workload `w`: a mounted Secret item."""
    directory, _, filename = path.rpartition("/")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    assert directory in mounts, f"{w['metadata']['name']}: nothing is mounted at {directory}"
    volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mounts[directory])
    secret = volume["secret"]
    item = next(i for i in secret["items"] if i["path"] == filename)
    return secret["secretName"], item["key"]


def store_clients(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The medaid containers that hold state in Redis (the console its live-session records)."""
    yield from medaid_containers(docs)


def test_every_service_signs_in_to_redis_with_the_password_redis_requires(docs):
    secrets = named(docs, "Secret")
    for w, c in store_clients(docs):
        env = container_env(c, named(docs, "ConfigMap"))
        path = env.get("MEDAID_REDIS_PASSWORD_FILE")
        assert isinstance(path, str) and path, f"{w['metadata']['name']}: no MEDAID_REDIS_PASSWORD_FILE"
        assert mounted_secret_file(w, c, path) == ("medaid-redis", "password"), w["metadata"]["name"]
    assert secrets["medaid-redis"]["stringData"]["password"]
    redis_pod = named(docs, "StatefulSet")["redis"]
    c = next(containers(redis_pod))
    script = " ".join(c["command"])
    found = re.search(r'--requirepass "\$\(cat (\S+)\)"', script)
    assert found, f"the Redis pod does not require the password: {c['command']}"
    assert mounted_secret_file(redis_pod, c, found[1]) == ("medaid-redis", "password")
    assert '"$@"' in script and c["command"][-1] == "valkey-server", "the args must reach valkey-server"
    assert found[1] in " ".join(c["readinessProbe"]["exec"]["command"]), "the probe must sign in too"


def test_networkpolicy_lets_only_the_services_reach_redis(docs):
    (policy,) = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "redis-from-services-only"]
    redis_pod = named(docs, "StatefulSet")["redis"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis_pod))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [next(containers(redis_pod))["ports"][0]["containerPort"]]

    def admitted(labels: dict[str, str]) -> bool:
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "no namespaceSelector / ipBlock: only pods of this namespace"
            selector = peer["podSelector"]
            assert set(selector) <= {"matchLabels", "matchExpressions"} and selector, selector
            assert all(e["operator"] in ("In", "NotIn") for e in selector.get("matchExpressions", []))
            if all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and \
                    all((labels.get(e["key"]) in e["values"]) == (e["operator"] == "In")
                        for e in selector.get("matchExpressions", [])):
                return True
        return False

    services = [w for w, _ in store_clients(docs)]
    assert len(services) >= 7
    for w in services:
        assert admitted(pod_labels(w)), f"{w['metadata']['name']} cannot reach Redis"
    assert any("medaid.console" in c.get("args", []) for _, c in store_clients(docs)), \
        "the console keeps its live-session records in Redis"
    assert not admitted({"app.kubernetes.io/name": "medaid", "app.kubernetes.io/component": "debug"})
    assert not admitted({"app": "anything-else"})
    assert "networkpolicy.yaml" in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


def test_compose_redis_requires_the_password_every_service_reads(compose):
    services = compose["services"]
    assert compose["secrets"]["redis-password"]["file"] == "./redis-password"
    assert "redis-password" in (ROOT / ".gitignore").read_text()
    redis_svc = services["redis"]
    assert "redis-password" in redis_svc["secrets"]
    script = " ".join(redis_svc["entrypoint"]).replace("$$", "$")  # what compose's interpolation passes on
    assert 'docker-entrypoint.sh valkey-server "$@"' in script, script
    assert '--requirepass "$(cat /run/secrets/redis-password)"' in script, script
    assert "$(" not in " ".join(redis_svc["entrypoint"]).replace("$$(", ""), "an unescaped $ is compose's, not sh's"
    for name, svc in services.items():
        if svc.get("image", "").split(":")[0] == "medaid" and svc.get("command") != ["medaid.console"]:
            assert "redis-password" in svc["secrets"], name
            assert compose_env(svc)["MEDAID_REDIS_PASSWORD_FILE"] == "/run/secrets/redis-password", name


# --- the Valkey Cluster alternative (deploy/k8s/valkey-cluster/) ----------------------------------------

CLUSTER_FILE = K8S / "valkey-cluster" / "valkey-cluster.yaml"


def test_the_valkey_cluster_manifest_runs_masters_with_replicas_that_fail_over(docs):
    """The manifest an operator swaps in for redis.yaml: valid, 3 masters with a replica each, every node
    durable (AOF always) and signed in with the Secret's password, partial coverage served, formed by a
    Job, reached by the services only."""
    cdocs = [d for d in yaml.safe_load_all(CLUSTER_FILE.read_text())]
    for doc in cdocs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    sts = named(cdocs, "StatefulSet")["valkey-cluster"]
    job = named(cdocs, "Job")["valkey-cluster-create"]
    c = next(containers(sts))
    args = c["args"]

    def arg(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert arg("--cluster-enabled") == "yes" and arg("--cluster-require-full-coverage") == "no"
    assert arg("--appendonly") == "yes" and arg("--appendfsync") == "always"
    assert int(arg("--cluster-node-timeout")) <= 5000
    create = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    replicas = int(re.search(r"--cluster-replicas (\d+)", create)[1])  # type: ignore[index]
    nodes = re.search(r"for i in ([\d ]+);", create)[1].split()  # type: ignore[index]
    assert replicas >= 1 and sts["spec"]["replicas"] == len(nodes) and len(nodes) // (1 + replicas) >= 3
    script = " ".join(c["command"])
    for flag in ("--requirepass", "--masterauth"):
        found = re.search(flag + r' "\$\(cat (\S+)\)"', script)
        assert found and mounted_secret_file(sts, c, found[1]) == ("medaid-redis", "password"), flag
    assert "VALKEYCLI_AUTH" in create
    images = {x["image"] for w in (sts, job) for x in containers(w)}
    assert images == set(redis_images(docs, {"services": {}}).values()), "the cluster runs the pinned image"
    svc = named(cdocs, "Service")["valkey-cluster"]
    assert svc["spec"]["clusterIP"] == "None" and selects(svc["spec"]["selector"], pod_labels(sts))
    policy = named(cdocs, "NetworkPolicy")["valkey-cluster-from-services-only"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(sts))
    client_rule, bus_rule = policy["spec"]["ingress"]
    assert [p["port"] for p in client_rule["ports"]] == [6379]
    assert sorted(p["port"] for p in bus_rule["ports"]) == [6379, 16379]
    peers = {v for e in bus_rule["from"][0]["podSelector"]["matchExpressions"] for v in e["values"]}
    assert {pod_labels(sts)["app.kubernetes.io/component"], pod_labels(job)["app.kubernetes.io/component"]} <= peers
    # The URL the comment tells operators to use parses as the services' cluster URL.
    url = re.search(r"(redis\+cluster://\S+)", CLUSTER_FILE.read_text())[1]  # type: ignore[index]
    assert [h for h, _ in cluster_seeds(url)[1]] == [f"valkey-cluster-{i}.valkey-cluster" for i in range(3)]

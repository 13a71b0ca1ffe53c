"""Cross-reference checks over a rendered set of Kubernetes resources.

Each ``check_*`` function takes the rendered documents and returns a list of problems (empty when all
is well), so a test can assert both that the shipped overlays pass and that a broken copy fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .assets import containers, pod_spec

__all__ = ["ALL_CHECKS", "ROLES", "effective_settings", "find", "parse_quantity", "selector_matches"]

Doc = dict[str, Any]
Check = Callable[[list[Doc]], list[str]]

# `lmaas <role>` → (gRPC port, metrics port): the defaults of DESIGN.md, "Ports and commands".
ROLES = {"worker": (8001, 8002), "control-plane": (8090, 8091)}
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"})
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def pod_labels(doc: Doc) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selector_matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only) or a Service's plain selector map against labels."""
    if not selector:
        return False
    if "matchExpressions" in selector:
        raise ValueError("matchExpressions are not used in deploy/ and not supported by these checks")
    wanted = selector.get("matchLabels", selector)
    return all(labels.get(key) == value for key, value in wanted.items())


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes resource quantity ("250m", "2", "4Gi") as a float."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"unsupported quantity {value!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def role(container: Doc) -> str | None:
    """The `lmaas` subcommand this container runs, if it is an LMaaS container."""
    args = container.get("args") or []
    return args[0] if args and args[0] in ROLES else None


def effective_settings(docs: list[Doc], container: Doc) -> dict[str, str]:
    """Settings a container ends up with: envFrom ConfigMaps, then env, then (LMaaS roles) CLI flags."""
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        config = find(docs, "ConfigMap", ref["name"]) if ref else None
        if config:
            settings.update({source.get("prefix", "") + k: str(v) for k, v in config.get("data", {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            settings[var["name"]] = str(var["value"])
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            config = find(docs, "ConfigMap", ref["name"])
            if config and ref["key"] in config.get("data", {}):
                settings[var["name"]] = str(config["data"][ref["key"]])
    args = list(container.get("args") or [])[1:] if role(container) else []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        flag, eq, value = arg[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "true"
        settings["LMAAS_" + flag.replace("-", "_").upper()] = value
    return settings


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def _named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pods(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(kind/name, workload, pod spec) for every workload."""
    for doc in workloads(docs):
        pod = pod_spec(doc)
        if pod is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc, pod


def check_security(docs: list[Doc]) -> list[str]:
    """Every pod meets the restricted Pod Security Standard and writes only to mounted volumes."""
    problems = []
    for where, _, pod in _pods(docs):
        pod_ctx = pod.get("securityContext", {})
        if pod_ctx.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        if pod_ctx.get("runAsUser", 1) == 0:
            problems.append(f"{where}: runs as UID 0")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            ctx = c.get("securityContext", {})
            name = f"{where} container {c['name']}"
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{name}: seccompProfile is not RuntimeDefault")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: readOnlyRootFilesystem is not true")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}: capabilities do not drop ALL")
            if ctx.get("capabilities", {}).get("add"):
                problems.append(f"{name}: adds capabilities")
            if ctx.get("privileged"):
                problems.append(f"{name}: privileged")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
                problems.append(f"{name}: /tmp is not an emptyDir (the root filesystem is read-only)")
            settings = effective_settings(docs, c)
            # control plane: LMAAS_ARTIFACT_DIR (the blob store); worker: LMAAS_CACHE_DIR (its artifact cache)
            artifact_dir = settings.get("LMAAS_ARTIFACT_DIR") or settings.get("LMAAS_CACHE_DIR")
            if artifact_dir and not any(
                artifact_dir.startswith(path.rstrip("/") + "/") or artifact_dir == path for path in mounts
            ):
                problems.append(f"{name}: artifact directory {artifact_dir} is not on a mounted volume")
    return problems


def check_resources(docs: list[Doc]) -> list[str]:
    """Every container requests and limits CPU and memory, requests <= limits."""
    problems = []
    for where, _, pod in _pods(docs):
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            res = c.get("resources", {})
            for resource in ("cpu", "memory"):
                request = res.get("requests", {}).get(resource)
                limit = res.get("limits", {}).get(resource)
                if request is None or limit is None:
                    problems.append(f"{where} container {c['name']}: no {resource} request and limit")
                elif parse_quantity(request) > parse_quantity(limit):
                    problems.append(f"{where} container {c['name']}: {resource} request {request} > limit {limit}")
    return problems


def check_references(docs: list[Doc]) -> list[str]:
    """ConfigMaps (and their keys), ServiceAccounts, claims and volumes that pods name all exist."""
    problems = []
    configmaps = _named(docs, "ConfigMap")
    accounts = _named(docs, "ServiceAccount")
    claims = _named(docs, "PersistentVolumeClaim")
    for where, owner, pod in _pods(docs):
        account = pod.get("serviceAccountName")
        if account and account not in accounts:
            problems.append(f"{where}: ServiceAccount {account} does not exist")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{where}: PersistentVolumeClaim {claim} does not exist")
            ref = volume.get("configMap", {}).get("name")
            if ref and ref not in configmaps:
                problems.append(f"{where}: ConfigMap {ref} (volume) does not exist")
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in templates:
                    problems.append(f"{where} container {c['name']}: volume {mount['name']} is not defined")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {})
                if ref and ref["name"] not in configmaps and not ref.get("optional"):
                    problems.append(f"{where} container {c['name']}: ConfigMap {ref['name']} does not exist")
            defined: set[str] = set()
            for var in c.get("env", []):
                where_var = f"{where} env {var['name']}"
                problems += [
                    f"{where_var}: $({name}) is not defined before it"
                    for name in _ENV_REF.findall(str(var.get("value", "")))
                    if name not in defined
                ]
                defined.add(var["name"])
                key_ref = var.get("valueFrom", {}).get("configMapKeyRef")
                if not key_ref or key_ref.get("optional"):
                    continue
                config = configmaps.get(key_ref["name"])
                if config is None:
                    problems.append(f"{where_var}: ConfigMap {key_ref['name']} does not exist")
                elif key_ref["key"] not in config.get("data", {}):
                    problems.append(f"{where_var}: ConfigMap {key_ref['name']} has no key {key_ref['key']}")
            known = defined | set(effective_settings(docs, c))
            for arg in [*c.get("command", []), *c.get("args", [])]:
                problems += [
                    f"{where} container {c['name']}: $({name}) in {arg!r} is not defined"
                    for name in _ENV_REF.findall(arg)
                    if name not in known
                ]
    return problems


def check_services(docs: list[Doc]) -> list[str]:
    """Each Service selects pods of exactly one workload, and its target ports exist on them."""
    problems = []
    for service in (d for d in docs if d["kind"] == "Service"):
        name = f"Service/{service['metadata']['name']}"
        selector = service["spec"].get("selector")
        targets = [w for w in workloads(docs) if selector_matches(selector, pod_labels(w))]
        if len(targets) != 1:
            problems.append(f"{name}: selector {selector} matches {len(targets)} workloads")
            continue
        ports = [p for c in containers(targets[0]) for p in c.get("ports", [])]
        headless = service["spec"].get("clusterIP") == "None"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            matched = [p for p in ports if target in (p.get("name"), p["containerPort"])]
            if not matched:
                problems.append(
                    f"{name}: targetPort {target} is not a container port of {targets[0]['metadata']['name']}"
                )
            elif headless and matched[0]["containerPort"] != port["port"]:
                # DNS of a headless Service returns pod IPs: clients dial `port` on the pod itself.
                problems.append(f"{name}: headless, so port {port['port']} must equal the container port")
    return problems


def check_ports(docs: list[Doc]) -> list[str]:
    """LMaaS ports agree across settings, containerPorts, probes, Services and scrape annotations."""
    problems = []
    for workload in workloads(docs):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        for c in containers(workload):
            kind = role(c)
            if kind is None:
                continue
            where = f"{workload['metadata']['name']} ({kind})"
            settings = effective_settings(docs, c)
            grpc_port, metrics_port = ROLES[kind]
            configured = (settings.get("LMAAS_GRPC_PORT"), settings.get("LMAAS_METRICS_PORT"))
            if configured != (str(grpc_port), str(metrics_port)):
                problems.append(f"{where}: ports {configured} are not {grpc_port}/{metrics_port}")
            if settings.get("LMAAS_HOST") != "0.0.0.0":
                problems.append(f"{where}: LMAAS_HOST is not 0.0.0.0, the pod IP would not be reachable")
            named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if named.get("grpc") != grpc_port or named.get("metrics") != metrics_port:
                problems.append(f"{where}: containerPorts {named} do not match {grpc_port}/{metrics_port}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec = c.get(probe)
                if spec is None:
                    problems.append(f"{where}: no {probe}")
                elif spec.get("grpc", {}).get("port") != grpc_port:
                    problems.append(f"{where}: {probe} is not a gRPC probe on {grpc_port}")
            if c.get("livenessProbe", {}).get("grpc", {}).get("service", "") != "":
                problems.append(f'{where}: the liveness probe must ask for the whole server (service "")')
            scrape = (annotations.get("prometheus.io/scrape"), annotations.get("prometheus.io/port"))
            if scrape != ("true", str(metrics_port)):
                problems.append(f"{where}: prometheus.io annotations do not point at {metrics_port}")
    return problems


def check_images(docs: list[Doc]) -> list[str]:
    """One LMaaS image for every role; no `latest` or untagged third-party images."""
    problems = []
    lmaas_images = {c["image"] for w in workloads(docs) for c in containers(w) if role(c)}
    if len(lmaas_images) != 1:
        problems.append(f"LMaaS workloads use different images: {sorted(lmaas_images)}")
    for workload in workloads(docs):
        for c in containers(workload):
            if role(c) is None and (":" not in c["image"].rsplit("/", 1)[-1] or c["image"].endswith(":latest")):
                problems.append(f"{workload['metadata']['name']}: image {c['image']} is not pinned")
    return problems


def check_scaling(docs: list[Doc]) -> list[str]:
    """HPAs and PDBs point at existing workloads; an autoscaled Deployment leaves `replicas` alone."""
    problems = []
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = find(docs, ref["kind"], ref["name"])
        if target is None or target["apiVersion"] != ref.get("apiVersion", target["apiVersion"]):
            problems.append(f"HPA {hpa['metadata']['name']}: target {ref} does not exist")
        elif "replicas" in target["spec"]:
            problems.append(f"HPA {hpa['metadata']['name']}: {ref['name']} sets replicas, which fights the HPA")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"HPA {hpa['metadata']['name']}: minReplicas > maxReplicas")
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        matched = [w for w in workloads(docs) if selector_matches(pdb["spec"]["selector"], pod_labels(w))]
        if len(matched) != 1:
            problems.append(f"PDB {pdb['metadata']['name']}: selector matches {len(matched)} workloads")
        if "minAvailable" in pdb["spec"]:
            problems.append(f"PDB {pdb['metadata']['name']}: use maxUnavailable, so a single replica can drain")
    for workload in workloads(docs):
        selector = workload["spec"].get("selector")
        if selector and not selector_matches(selector, pod_labels(workload)):
            problems.append(f"{workload['metadata']['name']}: selector does not match its own pod labels")
    return problems


def _etcd(docs: list[Doc]) -> Doc:
    found = find(docs, "StatefulSet", "etcd")
    if found is None:
        raise AssertionError("no StatefulSet/etcd")
    return found


def _expand(value: str, variables: dict[str, str]) -> str:
    return _ENV_REF.sub(lambda m: variables.get(m.group(1), m.group(0)), value)


def check_etcd(docs: list[Doc]) -> list[str]:
    """--initial-cluster names every StatefulSet pod by its DNS name; LMAAS_STORE lists the same members."""
    problems = []
    sts = _etcd(docs)
    name, service_name, replicas = sts["metadata"]["name"], sts["spec"]["serviceName"], sts["spec"]["replicas"]
    service = find(docs, "Service", service_name)
    if service is None or service["spec"].get("clusterIP") != "None":
        problems.append(f"etcd: serviceName {service_name} is not a headless Service")
    elif service["spec"].get("publishNotReadyAddresses") is not True:
        problems.append("etcd: peers cannot resolve each other before they are Ready (publishNotReadyAddresses)")
    if replicas > 1 and sts["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("etcd: OrderedReady start never forms a quorum; use podManagementPolicy Parallel")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: str(v["value"]) for v in container.get("env", []) if "value" in v}
    flags = {}
    for arg in container.get("args", []):
        key, _, value = arg.partition("=")
        flags[key] = value
    members = {}
    for ordinal in range(replicas):
        pod = f"{name}-{ordinal}"
        members[pod] = _expand(flags.get("--initial-advertise-peer-urls", ""), {**env, "POD_NAME": pod})
        if members[pod] != f"http://{pod}.{service_name}:2380":
            problems.append(f"etcd: {pod} advertises peer URL {members[pod]!r}")
        if _expand(flags.get("--name", ""), {**env, "POD_NAME": pod}) != pod:
            problems.append(f"etcd: {pod} is not named after its pod")
    initial = _expand(flags.get("--initial-cluster", ""), env)
    expected = ",".join(f"{pod}={url}" for pod, url in members.items())
    if initial != expected:
        problems.append(f"etcd: --initial-cluster is {initial!r}, expected {expected!r}")
    control_planes = [c for w in workloads(docs) for c in containers(w) if role(c) == "control-plane"]
    endpoints = ",".join(f"{pod}.{service_name}:2379" for pod in members)
    for c in control_planes:
        store = effective_settings(docs, c).get("LMAAS_STORE")
        if store != f"etcd://{endpoints}":
            problems.append(f"control plane: LMAAS_STORE is {store!r}, expected 'etcd://{endpoints}'")
    return problems


def _allows_port(rule: Doc, port: int, name: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (port, name) for p in ports)


def check_network_policy(docs: list[Doc]) -> list[str]:
    """Only control-plane pods reach etcd's client port; members reach each other's peer port."""
    problems = []
    sts = _etcd(docs)
    etcd_labels = pod_labels(sts)
    by_role = {role(c): pod_labels(w) for w in workloads(docs) for c in containers(w) if role(c)}
    policies = [
        p for p in docs if p["kind"] == "NetworkPolicy" and selector_matches(p["spec"]["podSelector"], etcd_labels)
    ]
    if not policies:
        return ["etcd: no NetworkPolicy selects the etcd pods"]
    client_rules = 0
    peer_ok = sts["spec"]["replicas"] == 1
    for policy in policies:
        if "Ingress" not in policy["spec"].get("policyTypes", []):
            problems.append(f"NetworkPolicy {policy['metadata']['name']}: does not restrict Ingress")
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from", [])
            if _allows_port(rule, 2380, "peer") and any(
                selector_matches(p.get("podSelector"), etcd_labels) for p in peers
            ):
                peer_ok = True
            if not _allows_port(rule, 2379, "client"):
                continue
            client_rules += 1
            if not peers:
                problems.append(f"NetworkPolicy {policy['metadata']['name']}: admits everyone to 2379")
            for peer in peers:
                if set(peer) != {"podSelector"}:
                    problems.append(
                        f"NetworkPolicy {policy['metadata']['name']}: 2379 open beyond pods in the namespace: {peer}"
                    )
                elif not selector_matches(peer["podSelector"], by_role["control-plane"]):
                    problems.append(
                        f"NetworkPolicy {policy['metadata']['name']}: 2379 admits non-control-plane pods {peer}"
                    )
                elif selector_matches(peer["podSelector"], by_role["worker"]):
                    problems.append(f"NetworkPolicy {policy['metadata']['name']}: workers can reach etcd")
    if client_rules == 0:
        problems.append("etcd: no NetworkPolicy rule admits the control plane to 2379")
    if not peer_ok:
        problems.append("etcd: members cannot reach each other on 2380")
    return problems


def check_termination(docs: list[Doc]) -> list[str]:
    """Workers get longer than preStop + drain to stop, and liveness never kills a draining worker."""
    problems = []
    for workload in workloads(docs):
        pod = pod_spec(workload) or {}
        for c in containers(workload):
            if role(c) != "worker":
                continue
            grace = pod.get("terminationGracePeriodSeconds", 30)
            drain = _seconds(effective_settings(docs, c).get("LMAAS_DRAIN_TIMEOUT", "30"))
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace <= drain + pre_stop:
                problems.append(f"worker: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")
            live = c["livenessProbe"]
            window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
            if window < grace:
                problems.append(f"worker: liveness gives up after {window}s, inside the {grace}s grace period")
    return problems


def check_artifact_storage(docs: list[Doc]) -> list[str]:
    """Several control-plane replicas need one shared (ReadWriteMany) artifact volume."""
    problems = []
    for workload in workloads(docs):
        for c in containers(workload):
            if role(c) != "control-plane":
                continue
            artifact_dir = effective_settings(docs, c).get("LMAAS_ARTIFACT_DIR", "")
            mount = next((m for m in c.get("volumeMounts", []) if artifact_dir.startswith(m["mountPath"])), None)
            volume: Doc = next(
                (v for v in (pod_spec(workload) or {}).get("volumes", []) if mount and v["name"] == mount["name"]), {}
            )
            claim = find(docs, "PersistentVolumeClaim", volume.get("persistentVolumeClaim", {}).get("claimName", ""))
            shared = claim is not None and "ReadWriteMany" in claim["spec"]["accessModes"]
            if workload["spec"].get("replicas", 1) > 1 and not shared:
                problems.append(
                    f"{workload['metadata']['name']}: several replicas but the artifact store is not ReadWriteMany"
                )
    return problems


def _roles_behind(docs: list[Doc], service: Doc) -> set[str | None]:
    """The LMaaS roles of the pods a Service selects."""
    selector = service["spec"].get("selector")
    return {role(c) for w in workloads(docs) if selector_matches(selector, pod_labels(w)) for c in containers(w)}


def check_wiring(docs: list[Doc]) -> list[str]:
    """Workers dial the control-plane Service's gRPC port; the worker Service is headless."""
    problems = []
    for workload in workloads(docs):
        for c in containers(workload):
            if role(c) != "worker":
                continue
            host, _, port = effective_settings(docs, c).get("LMAAS_CONTROL_PLANE", "").rpartition(":")
            service = find(docs, "Service", host.split(".")[0])
            grpc_ports = (
                [str(p["port"]) for p in service["spec"]["ports"] if p.get("name") == "grpc"] if service else []
            )
            if service is None or port not in grpc_ports:
                problems.append(f"worker: LMAAS_CONTROL_PLANE {host}:{port} is not a Service's gRPC port")
            elif _roles_behind(docs, service) != {"control-plane"}:
                problems.append(f"worker: Service {host} does not lead to the control plane")
    for service in (d for d in docs if d["kind"] == "Service"):
        if "worker" in _roles_behind(docs, service) and service["spec"].get("clusterIP") != "None":
            name = service["metadata"]["name"]
            problems.append(f"Service/{name}: the worker Service must be headless for client-side balancing")
    return problems


def check_namespace(docs: list[Doc]) -> list[str]:
    """Everything namespaced lands in the Namespace the overlay creates."""
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    if len(namespaces) != 1:
        return [f"expected one Namespace, found {namespaces}"]
    return [
        f"{d['kind']}/{d['metadata']['name']}: namespace {d['metadata'].get('namespace')}"
        for d in docs
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespaces[0]
    ]


ALL_CHECKS: tuple[Check, ...] = (
    check_security,
    check_resources,
    check_references,
    check_services,
    check_ports,
    check_images,
    check_scaling,
    check_etcd,
    check_network_policy,
    check_termination,
    check_artifact_storage,
    check_wiring,
    check_namespace,
)

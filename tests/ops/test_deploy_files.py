"""Deployment and monitoring files, checked by the real tools where the machine has them.

* ``docker/k8s/*.yaml``: core resources validated by ``kubernetes-validate`` (strict);
  the KEDA objects (a CRD it has no schema for) by their structure; the worker's
  arguments parse with the real CLI; the grace period exceeds ``--shutdown-timeout``;
  requests cover the capacity plan quoted in the README;
* ``docker/prometheus/alerts.yml``: ``promtool check rules`` and ``promtool test rules``;
* ``docker/grafana/*.json``: every query is valid PromQL (``promtool``) on known metrics;
* ``docker/systemd``: ``systemd-analyze verify``; stop timeout exceeds ``--shutdown-timeout``;
* ``docker/Dockerfile``: its HEALTHCHECK runs ``asyncjobs-worker check``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from asyncjobs.cli.worker import build_parser
from tests.testsupport.workers import BIN_DIR, asyncjobs_worker_command

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"

# The metric names issue 11 §1 defines (alerts and dashboards may use only these).
METRICS = {
    "asyncjobs_jobs_total", "asyncjobs_job_duration_seconds", "asyncjobs_job_start_delay_seconds",
    "asyncjobs_jobs_in_flight", "asyncjobs_concurrency_limit", "asyncjobs_event_loop_lag_seconds",
    "asyncjobs_redis_errors_total", "asyncjobs_delivery_total", "asyncjobs_queue_jobs",
    "asyncjobs_queue_oldest_job_age_seconds", "asyncjobs_workers_live",
}


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(asyncjobs_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed: `apt-get install -y prometheus` (Debian ships it there)")
    return found


def _docs() -> list[dict[str, Any]]:
    import yaml

    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _deployment(name: str = "asyncjobs-worker") -> dict[str, Any]:
    (dep,) = [d for d in _docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return dep


def _worker_args() -> list[str]:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return [str(a) for a in container["args"]]


# ------------------------------------------------------------------------------------ Kubernetes


def test_k8s_core_resources_validate_strictly() -> None:
    import kubernetes_validate

    core = [d for d in _docs() if not d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))]
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "PodDisruptionBudget"}
    version = kubernetes_validate.latest_version()
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validation_catches_a_broken_manifest() -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(_deployment()))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_k8s_worker_args_grace_period_and_probes() -> None:
    args, unknown = build_parser().parse_known_args(_worker_args())
    assert not unknown, f"the worker would reject {unknown}"
    pod = _deployment()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_timeout
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == args.health_port
    assert ports["metrics"] == args.metrics_port
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    # --processes N needs a writable /tmp (the supervisor's PROMETHEUS_MULTIPROC_DIR) on a read-only root.
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert not container["securityContext"].get("readOnlyRootFilesystem") or "/tmp" in mounts
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_k8s_requests_cover_the_readme_capacity_plan() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"asyncjobs-worker --concurrency (\d+) --processes (\d+)\s+-> ~([\d,]+) MB RSS, ~([\d.]+) CPU", readme)
    assert m, "the README's capacity-plan example moved: update this test and the manifest"
    conc, procs, mem_mb, cores = int(m[1]), int(m[2]), float(m[3].replace(",", "")), float(m[4])
    args, _ = build_parser().parse_known_args(_worker_args())
    assert args.concurrency == conc and args.processes == procs
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    req = container["resources"]["requests"]
    assert req["memory"].endswith("Mi") and int(req["memory"][:-2]) >= mem_mb
    assert req["cpu"].endswith("m") and int(req["cpu"][:-1]) / 1000 >= cores
    assert "cpu" not in container["resources"].get("limits", {}), "a CPU limit throttles the event loop"


def test_keda_scaledobject_scales_the_deployment_on_rq_queue_lists() -> None:
    docs = _docs()
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (auth,) = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == _deployment()["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    args, _ = build_parser().parse_known_args(_worker_args())
    queues = set(args.queues.split(","))
    lists = set()
    env = {e["name"] for e in _deployment()["spec"]["template"]["spec"]["containers"][0]["env"]}
    for trig in scaled["spec"]["triggers"]:
        assert trig["type"] == "redis"
        md = trig["metadata"]
        assert int(md["listLength"]) > 0
        assert md["addressFromEnv"] in env
        assert trig["authenticationRef"]["name"] == auth["metadata"]["name"]
        lists.add(md["listName"])
    assert lists == {f"rq:queue:{q}" for q in queues}, "one trigger per queue the worker serves, on RQ's list"


# ------------------------------------------------------------------------------------ Prometheus


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _promtool()
    prom = DOCKER / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=prom, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=prom, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    import yaml

    rules = yaml.safe_load((prom / "alerts.yml").read_text())["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    assert {"AsyncjobsHighFailureRate", "AsyncjobsQueueBacklogAge", "AsyncjobsNoLiveWorker",
            "AsyncjobsEventLoopLag"} <= alerts
    for rule in rules:
        assert _metric_names(rule["expr"]) <= METRICS, rule["alert"]


def test_k8s_monitoring_scrapes_workers_and_exporter_with_the_shipped_rules() -> None:
    """Issue 22: the exporter runs beside the workers (so the backlog and no-worker alerts fire with the
    fleet down), a ServiceMonitor scrapes both metrics Services, the PrometheusRule is alerts.yml."""
    import yaml

    docs = _docs()
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert monitor["apiVersion"] == rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    services = [d for d in docs if d["kind"] == "Service"]
    scraped = [s for s in services if s["metadata"]["labels"]["app.kubernetes.io/name"] in expression["values"]]
    assert {s["metadata"]["name"] for s in scraped} == {"asyncjobs-worker-metrics", "asyncjobs-exporter"}
    assert all(s["metadata"]["name"].startswith("asyncjobs") for s in scraped)  # the job label AsyncjobsTargetDown matches
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert all(ports <= {p["name"] for p in s["spec"]["ports"]} for s in scraped)
    (container,) = _deployment("asyncjobs-exporter")["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "exporter"
    from asyncjobs.cli.worker import _sub_parser

    args = _sub_parser("exporter").parse_args(container["args"][1:])
    assert {p["containerPort"] for p in container["ports"]} == {args.port} and args.host == "0.0.0.0"


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    promtool = _promtool()
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(asyncjobs_jobs_total[5m]\n")
    assert subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True).returncode != 0


def test_grafana_dashboard_queries_are_valid_promql_on_known_metrics(tmp_path: Path) -> None:
    import yaml

    dashboards = sorted((DOCKER / "grafana").glob("*.json"))
    assert dashboards
    exprs: list[str] = []
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"]
        for panel in dash["panels"]:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                exprs.append(target["expr"])
                assert _metric_names(target["expr"]) <= METRICS, (panel["title"], target["expr"])
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used == METRICS, f"not on the dashboard: {sorted(METRICS - used)}"
    # Grafana's variables become plain values, then promtool parses each query as a recording rule.
    concrete = [e.replace("$__rate_interval", "5m").replace("$queue", ".*") for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(concrete)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------------ systemd, Docker


def _unit() -> tuple[Path, dict[str, str]]:
    (path,) = sorted((DOCKER / "systemd").glob("*.service"))
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return path, values


def test_systemd_unit_verifies_and_outlasts_the_shutdown_timeout(tmp_path: Path) -> None:
    path, unit = _unit()
    exec_start = unit["ExecStart"].split()
    args, unknown = build_parser().parse_known_args(
        [a.replace("%i", "emails,sms").replace("%H", "host") for a in exec_start[1:]]
    )
    assert not unknown, unknown
    assert unit["KillSignal"] == "SIGTERM"
    assert int(unit["TimeoutStopSec"]) > args.shutdown_timeout
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's values were checked above")
    # Verify a copy whose ExecStart points at this venv's real console script.
    worker_bin = BIN_DIR / "asyncjobs-worker"
    assert worker_bin.exists(), "install the package (make install) to get the console script"
    text = path.read_text().replace("/opt/myapp/.venv/bin/asyncjobs-worker", str(worker_bin))
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    copy = tmp_path / "asyncjobs-worker@emails.service"
    copy.write_text(text)
    res = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if copy.name in ln or "asyncjobs" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_dockerfile_healthcheck_runs_the_check_subcommand() -> None:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln.strip() for ln in text.splitlines() if ln.strip().upper().startswith("HEALTHCHECK")]
    cmd = json.loads(line[line.index("CMD") + 3:].strip())
    assert cmd[:2] == ["asyncjobs-worker", "check"]
    res = subprocess.run([*asyncjobs_worker_command(), *cmd[1:], "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "heart-beating" in res.stdout

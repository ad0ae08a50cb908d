"""deploy/k8s: valid against the Kubernetes API schema, and wired to what the platform really serves."""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from django.urls import resolve

from tests.support.commands import REPO_ROOT

from .health import NOT_OURS, get
from .manifests import K8S_DIR, KUSTOMIZATIONS, SECRET_EXAMPLE, Manifest, build, every_manifest, one, selects

#: The oldest Kubernetes release still maintained when these were written, and the newest the tool knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
#: Kinds the Kubernetes API schema does not define (custom resources), checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}
SECRET_KEYS = {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "PLATFORM_METRICS_TOKEN"}


def container(name: str = "platform") -> dict:
    spec = one("Deployment", "platform")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def config() -> dict[str, str]:
    return one("ConfigMap", "platform-config")["data"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", every_manifest(), ids=lambda m: f"{m.kind}/{m.name}")
def test_every_manifest_is_valid_against_the_kubernetes_api_schema(manifest: Manifest, version: str):
    if manifest.kind in CUSTOM_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(manifest.document, version, strict=True)
        return
    try:
        kubernetes_validate.validate(manifest.document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{manifest.path.relative_to(REPO_ROOT)}: {manifest.kind} {manifest.name}: "
                    f"{exc.message} at {'.'.join(map(str, exc.path))}", pytrace=False)


def test_the_schema_check_catches_a_misspelt_field():
    deployment = one("Deployment", "platform")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_every_file_under_deploy_k8s_is_applied_by_a_kustomization():
    applied = {m.path for directory in KUSTOMIZATIONS for m in build(directory)}
    files = {p.resolve() for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - applied == {SECRET_EXAMPLE.resolve()}


@pytest.mark.django_db
async def test_the_probes_ask_the_platforms_health_endpoints():
    platform = container()
    live = platform["livenessProbe"]["httpGet"]["path"]
    ready = platform["readinessProbe"]["httpGet"]["path"]
    assert platform["startupProbe"]["httpGet"]["path"] == live
    assert await get(live) == (200, b'{"live":true}')
    # Not ready in this test process (no models loaded), but the endpoint that says so.
    status, body = await get(ready)
    assert (status, yaml.safe_load(body)) in ((200, {"ready": True}), (503, {"ready": False}))
    assert (await get("/v2/health/nothing"))[0] == NOT_OURS


def test_the_ports_are_the_ones_the_server_listens_on():
    platform = container()
    command = platform["command"]
    port = int(command[command.index("-p") + 1])
    [declared] = platform["ports"]
    assert declared == {"name": "http", "containerPort": port, "protocol": "TCP"}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile and f"-p {port} platform_core.asgi:application" in dockerfile
    assert command[-1] == "platform_core.asgi:application" and command[:3] == ["python", "-m", "platform_core.server"]
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert platform[probe_name]["httpGet"]["port"] == "http"
    for service in ("platform", "platform-metrics"):
        spec = one("Service", service)["spec"]
        assert selects(spec["selector"], one("Deployment")["spec"]["template"]["metadata"]["labels"])
        assert [p["targetPort"] for p in spec["ports"]] == ["http"]
    assert one("Service", "platform-metrics")["spec"]["clusterIP"] == "None"  # every pod, not one of them


def test_the_grace_period_outlasts_prestop_and_the_whole_drain():
    """preStop, then HTTP and WebSocket requests in flight (each up to the request timeout plus a second,
    streaming/oip/app.py and streaming/draining.py), then the prediction log's last write."""
    pod = one("Deployment", "platform")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    request_timeout_s = int(config()["PLATFORM_REQUEST_TIMEOUT_MS"]) / 1000
    drain_s = 2 * (request_timeout_s + 1.0) + float(config()["PLATFORM_LOG_DB_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s + 10


def test_the_settings_the_grace_period_depends_on_are_the_platforms():
    from django.conf import settings  # the names exist: a renamed setting would leave the manifest behind

    for name in ("PLATFORM_REQUEST_TIMEOUT_MS", "PLATFORM_LOG_DB_TIMEOUT_S", "PLATFORM_DATA_DIR"):
        assert name in config()
        assert name in (REPO_ROOT / "platform_core" / "settings.py").read_text()
    assert hasattr(settings, "PLATFORM_REQUEST_TIMEOUT_MS") and hasattr(settings, "PLATFORM_LOG_DB_TIMEOUT_S")


def test_every_variable_the_pods_refer_to_is_defined():
    for manifest in every_manifest():
        if manifest.kind not in ("Deployment", "Job"):
            continue
        pod = manifest.document["spec"]["template"]["spec"]
        for item in pod.get("initContainers", []) + pod["containers"]:
            defined = set(config()) if {"configMapRef": {"name": "platform-config"}} in item["envFrom"] else set()
            assert {"secretRef": {"name": "platform-secrets"}} in item["envFrom"]
            defined |= SECRET_KEYS
            text = yaml.safe_dump(item.get("command", []))
            for env in item.get("env", []):
                text += str(env.get("value", ""))
                defined.add(env["name"])
            assert set(re.findall(r"\$\((\w+)\)", text)) <= defined, item["name"]
            assert item["image"] == "inference-platform:latest"


def test_the_secret_holds_what_the_platform_reads_and_the_url_services_are_outside():
    assert set(yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"]) == SECRET_KEYS
    kinds = {m.kind for m in every_manifest()}
    assert not kinds & {"StatefulSet"}, "PostgreSQL and Redis are external, reached by URL"


def test_budget_autoscaler_and_job_point_at_the_platform():
    labels = one("Deployment", "platform")["spec"]["template"]["metadata"]["labels"]
    assert selects(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "platform"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    # The budget lets a node drain proceed while the autoscaler's minimum keeps serving.
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["minReplicas"]
    assert "requests" in container()["resources"]  # a CPU utilization target needs requests
    job = one("Job", "platform-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:3] == ["python", "manage.py", "migrate"]


def test_the_service_monitor_scrapes_the_metrics_service_with_the_token():
    """No schema for the Prometheus Operator's CRD ships with the validator: its fields are checked here."""
    monitor = one("ServiceMonitor", "platform")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    metrics = one("Service", "platform-metrics")
    assert selects(monitor["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"]["matchLabels"], one("Service", "platform")["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "authorization"}
    assert endpoint["port"] in [p["name"] for p in metrics["spec"]["ports"]]
    assert resolve(endpoint["path"]).url_name == "metrics"
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {"name": "platform-secrets", "key": "PLATFORM_METRICS_TOKEN"}
    for duration in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert re.fullmatch(r"\d+(ms|s|m|h)", duration)


def test_the_plain_prometheus_scrape_config_is_valid_and_finds_every_pod(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/system-deps.sh (make test)"
    scrape = yaml.safe_load(one("ConfigMap", "platform-prometheus-scrape")["data"]["platform-scrape.yml"])
    [job] = scrape["scrape_configs"]
    metrics = one("Service", "platform-metrics")
    assert job["dns_sd_configs"][0]["names"] == [
        f"{metrics['metadata']['name']}.{metrics['metadata']['namespace']}.svc.cluster.local"]
    assert job["dns_sd_configs"][0]["port"] == metrics["spec"]["ports"][0]["port"]
    assert resolve(job["metrics_path"]).url_name == "metrics"
    # promtool wants the token file to exist: the one Prometheus would mount, here a file of the test's.
    token = tmp_path / "token"
    token.write_text("t")
    job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

"""Assertions on the chart's rendered manifests (run by scripts/chart-check).

RENDERED is a directory of `<value set>.yaml` renders of charts/mantle/ci/*-values.yaml;
HELM, PROMTOOL and KUBE_VERSION name the tools chart-check installed.
"""

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parent.parent
ROOT = CHART.parent.parent
RENDERED = Path(os.environ["RENDERED"])
HELM = os.environ["HELM"]
PROMTOOL = os.environ["PROMTOOL"]
KUBE_VERSION = os.environ["KUBE_VERSION"]
SETS = sorted(p.name[: -len("-values.yaml")] for p in (CHART / "ci").glob("*-values.yaml"))
POSTGRES_SETS = ["production", "keys-file"]


def test_value_sets_are_the_expected_ones():
    assert SETS == ["default", "keys-file", "production"]


def load(set_name):
    docs = [d for d in yaml.safe_load_all((RENDERED / f"{set_name}.yaml").read_text()) if d]
    return docs


def values(set_name):
    return yaml.safe_load((CHART / "ci" / f"{set_name}-values.yaml").read_text()) or {}


def one(docs, kind, suffix=None):
    found = [d for d in docs if d["kind"] == kind and (suffix is None or d["metadata"]["name"].endswith(suffix))]
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def render(*args):
    """helm template with extra arguments; returns (exit code, stdout, stderr)."""
    p = subprocess.run(
        [HELM, "template", "mantle", str(CHART), "--namespace", "mantle", "--kube-version", f"{KUBE_VERSION}.0", *args],
        capture_output=True,
        text=True,
    )
    return p.returncode, p.stdout, p.stderr


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, duration
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def config_data(docs):
    return one(docs, "ConfigMap", "mantle")["data"]


def container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# ---- every value set ---------------------------------------------------------------------


@pytest.mark.parametrize("set_name", SETS)
def test_one_port_named_grpc(set_name):
    docs = load(set_name)
    svc = one(docs, "Service")
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "grpc" and port["appProtocol"] == "grpc" and port["targetPort"] == "grpc"
    c = container(one(docs, "Deployment"))
    assert c["ports"] == [{"name": "grpc", "containerPort": port["port"], "protocol": "TCP"}]
    assert config_data(docs)["MANTLE_API_ADDRESS"] == f"0.0.0.0:{port['port']}"
    assert svc["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("set_name", SETS)
def test_probes_of_the_chosen_type_on_the_port(set_name):
    docs = load(set_name)
    c = container(one(docs, "Deployment"))
    port = c["ports"][0]["containerPort"]
    kind = values(set_name).get("probes", {}).get("type", "grpc")
    for probe in ("readinessProbe", "startupProbe"):
        p = c[probe]
        if kind == "grpc":
            assert p["grpc"] == {"port": port, "service": ""}, probe
            assert "httpGet" not in p
        else:
            assert p["httpGet"] == {"path": "/readyz", "port": "grpc"}, probe
            assert "grpc" not in p
    # Liveness never depends on the database.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "grpc"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] > 30


@pytest.mark.parametrize("set_name", SETS)
def test_security_context(set_name):
    docs = load(set_name)
    workloads = [one(docs, "Deployment")] + [d for d in docs if d["kind"] == "Job"]
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] > 0 and psc["runAsGroup"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be writable"
    sa = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert [s["automountServiceAccountToken"] for s in sa] == [False]


@pytest.mark.parametrize("set_name", SETS)
def test_data_dir_is_a_writable_volume(set_name):
    docs = load(set_name)
    d = one(docs, "Deployment")
    mounts = {m["mountPath"]: m["name"] for m in container(d)["volumeMounts"]}
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    data = volumes[mounts[config_data(docs)["MANTLE_DATA_DIR"]]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data


@pytest.mark.parametrize("set_name", SETS)
def test_termination_grace_exceeds_the_drain(set_name):
    docs = load(set_name)
    drain = seconds(config_data(docs)["MANTLE_SHUTDOWN_GRACE_PERIOD"])
    expected = values(set_name).get("config", {}).get("shutdownGracePeriodSeconds", 30)
    assert drain == expected
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain


@pytest.mark.parametrize("set_name", SETS)
def test_command_is_mantle_serve(set_name):
    c = container(one(load(set_name), "Deployment"))
    assert c["command"] == ["mantle"] and c["args"] == ["serve"]
    assert c["envFrom"] == [{"configMapRef": {"name": "mantle"}}]


# ---- PostgreSQL: the migration hook --------------------------------------------------------


def hook_weight(doc):
    return int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])


@pytest.mark.parametrize("set_name", POSTGRES_SETS)
def test_migration_hook_job(set_name):
    docs = load(set_name)
    job = one(docs, "Job")
    a = job["metadata"]["annotations"]
    assert set(a["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(a["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert job["spec"]["backoffLimit"] >= 0 and job["spec"]["activeDeadlineSeconds"] > 0
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["mantle"] and c["args"] == ["init"]
    deployment = one(docs, "Deployment")
    assert pod["securityContext"] == deployment["spec"]["template"]["spec"]["securityContext"]
    assert c["securityContext"] == container(deployment)["securityContext"]
    # The Job runs before the ConfigMap exists: it carries the same settings inline.
    env = {e["name"]: e for e in c["env"]}
    for key, value in config_data(docs).items():
        if key != "MANTLE_TENANT_KEYS_PATH":
            assert env[key]["value"] == value
    assert "MANTLE_DATABASE_URL" in env and "MANTLE_ENCRYPTION_KEY" in env
    # Pods of the Job are not the Service's.
    selector = one(docs, "Service")["spec"]["selector"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    # The chart's Secret, when there is one, exists before the Job: a hook of lower weight.
    for secret in (d for d in docs if d["kind"] == "Secret"):
        sa = secret["metadata"]["annotations"]
        assert set(sa["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert hook_weight(secret) < hook_weight(job)
        assert sa["helm.sh/resource-policy"] == "keep"
    # RollingUpdate only where replicas share PostgreSQL.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_sqlite_has_no_migration_job_and_recreates():
    docs = load("default")
    assert "Job" not in kinds(docs) and "Secret" not in kinds(docs)
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


def test_existing_secret_keys():
    docs = load("production")
    assert "Secret" not in kinds(docs)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(one(docs, "Deployment"))["env"] if "valueFrom" in e}
    assert env["MANTLE_DATABASE_URL"] == {"name": "mantle-credentials", "key": "MANTLE_DATABASE_URL"}
    assert env["MANTLE_ENCRYPTION_KEY"] == {"name": "mantle-credentials", "key": "MANTLE_ENCRYPTION_KEY"}
    assert env["MANTLE_ENCRYPTION_KEY_PREVIOUS"]["optional"] is True


# ---- the keys file ----------------------------------------------------------------------


def test_keys_file_is_mounted_read_only_and_private():
    docs = load("keys-file")
    d = one(docs, "Deployment")
    path = config_data(docs)["MANTLE_TENANT_KEYS_PATH"]
    (mount,) = [m for m in container(d)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    volume = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    mode = volume["secret"]["defaultMode"]
    assert mode & 0o007 == 0, f"others may read the keys file: {mode:o}"
    assert mode == 0o400
    assert volume["secret"]["items"] == [{"key": "tenant-keys.json", "path": path[len(mount["mountPath"]) + 1 :]}]
    secret = one(docs, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert "tenant-keys.json" in secret["data"]
    # The file is root-owned with group fsGroup: the daemon's group must be fsGroup.
    assert d["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == container(d)["securityContext"]["runAsGroup"]
    assert "checksum/secret" in d["spec"]["template"]["metadata"]["annotations"]


def test_keys_file_mode_open_to_others_fails():
    code, _, err = render(
        "--set", "tenantKeys.enabled=true", "--set-string", 'tenantKeys.json={"keys":[]}', "--set", "tenantKeys.defaultMode=0444"
    )
    assert code != 0 and "lets other users read the keys file" in err


# ---- renders that must fail ----------------------------------------------------------------


def test_replicas_without_postgres_fail():
    code, _, err = render("--set", "replicaCount=3")
    assert code != 0
    assert "replicaCount is 3 but no PostgreSQL is configured" in err


def test_hpa_without_postgres_fails():
    code, _, err = render("--set", "autoscaling.enabled=true")
    assert code != 0 and "autoscaling.enabled needs PostgreSQL" in err


def test_postgres_without_encryption_key_fails():
    code, _, err = render("--set", "secret.databaseUrl=postgres://m@db/m")
    assert code != 0 and "secret.encryptionKey is required with PostgreSQL" in err


def test_unknown_config_key_fails():
    code, _, err = render("--set", "config.logLevl=debug")
    assert code != 0 and "config.logLevl is not a Mantle setting" in err


def test_keys_file_as_yaml():
    code, out, err = render(
        "--set", "tenantKeys.enabled=true", "--set", "tenantKeys.json.keys[0].token=test-only-0123456789abcdef",
        "--set", "tenantKeys.json.keys[0].tenant=acme", "--set", "tenantKeys.json.keys[0].scopes[0]=*",
    )
    assert code == 0, err
    secret = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Secret")
    keys = json.loads(base64.b64decode(secret["data"]["tenant-keys.json"]))
    assert keys == {"keys": [{"token": "test-only-0123456789abcdef", "tenant": "acme", "scopes": ["*"]}]}


def test_replicas_with_postgres_render():
    code, out, err = render("--set", "replicaCount=3", "--set", "existingSecret=creds")
    assert code == 0, err
    assert "replicas: 3" in out


def test_numbers_render_as_the_daemon_reads_them():
    code, out, err = render("--set", "config.maxStepOutputBytes=2097152", "-f", str(CHART / "ci" / "production-values.yaml"))
    assert code == 0, err
    cm = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mantle")
    assert cm["data"]["MANTLE_MAX_STEP_OUTPUT_BYTES"] == "2097152"
    assert cm["data"]["MANTLE_RETENTION_DAYS"] == "30"
    assert cm["data"]["MANTLE_ENV_REGION"] == "eu-west-1"


# ---- production: scaling, monitoring ---------------------------------------------------------


def test_production_objects():
    docs = load("production")
    assert kinds(docs) == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "NetworkPolicy",
         "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]
    )
    d = one(docs, "Deployment")
    assert "replicas" not in d["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": d["metadata"]["name"]}
    selector = d["spec"]["selector"]["matchLabels"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    netpol = one(docs, "NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"] == selector
    assert netpol["spec"]["ingress"][0]["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert netpol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    sm = one(docs, "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "grpc" and endpoint["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    svc = one(docs, "Service")
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())


def daemon_metrics():
    """Metric names the daemon registers (from its source), with histogram series."""
    names = set()
    for path in (ROOT / "daemon" / "src").rglob("*.rs"):
        names.update(re.findall(r'"(mantle_[a-z_]+)"', path.read_text()))
    for path in (ROOT / "daemon" / "src").rglob("*.rs"):
        for m in re.findall(r'histogram!\(\s*"(mantle_[a-z_]+)"', path.read_text()):
            names.update({m + "_bucket", m + "_sum", m + "_count"})
    return names


def used_metrics(expr):
    return set(re.findall(r"\b(mantle_[a-z_]+)\b", expr))


def alert_rules():
    return one(load("production"), "PrometheusRule")["spec"]["groups"][0]["rules"]


def test_alerts_cover_the_required_signals_with_real_metrics():
    rules = {r["alert"]: r for r in alert_rules()}
    assert {"MantleDatabaseDown", "MantleGrpcErrors", "MantleGrpcLatencyHigh", "MantleWebhookDeliveriesFailing",
            "MantleExecutionsFailing", "MantleRetentionBehind"} <= set(rules)
    known = daemon_metrics()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert used_metrics(rule["expr"]) <= known, f"{name} uses metrics the daemon does not export"
        assert 'job="mantle",namespace="mantle"' in rule["expr"], name


def dashboard():
    return json.loads((CHART / "dashboards" / "mantle.json").read_text())


def dashboard_exprs():
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_dashboard_uses_real_metrics_and_is_shipped():
    known = daemon_metrics()
    for expr in dashboard_exprs():
        assert used_metrics(expr), expr
        assert used_metrics(expr) <= known, expr
    cm = one(load("production"), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["mantle.json"]) == dashboard()


def promtool_check(tmp_path, rules):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    p = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_alert_rules_pass_promtool(tmp_path):
    promtool_check(tmp_path, alert_rules())


def test_dashboard_queries_pass_promtool(tmp_path):
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$namespace", "mantle").replace("$job", "mantle")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    promtool_check(tmp_path, rules)


# ---- packaging -------------------------------------------------------------------------------


def test_app_version_is_the_workspace_version():
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S)[1]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version
    container_image = container(one(load("default"), "Deployment"))["image"]
    assert container_image == f"mantle:{version}"


def test_values_table_is_current():
    p = subprocess.run([str(ROOT / "scripts" / "chart-values-table"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

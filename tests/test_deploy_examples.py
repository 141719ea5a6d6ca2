"""The deployment examples (examples/deploy/, docs/deploy.md) that cannot run here.

Kubernetes, Docker and the collector are not on this machine, so their files are checked
for what can go wrong without them: every YAML file parses; every variable they set for
the app is one the agent honours (``config.VARIABLES``, or ``AUTOTRACE_ENABLED``, read
by ``autotrace-agent.pth``), and the values read without a warning; the collector's
pipeline has its memory limiter first, a batch processor and an OTLP exporter; the paths
the files name exist. The Dockerfiles' recipes are run for real elsewhere:
integration/test_deploy_image.py (the app image's environment and command) and
integration/test_wheel.py (the operator image's layout).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml  # test-only dependency (the "test" extra)

from autotrace import config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
DOCKERFILES = sorted(DEPLOY.rglob("Dockerfile"))
# Kubernetes expands $(NAME) of a variable defined earlier in the same list.
K8S_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def honoured() -> set[str]:
    names = {name for names in config.VARIABLES.values() for name in names}
    pth = (ROOT / "autotrace-agent.pth").read_text()
    assert "AUTOTRACE_ENABLED" in pth  # read at every start-up by the .pth file
    return names | {"AUTOTRACE_ENABLED"}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_there_are_examples():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES + DOCKERFILES}
    assert {
        "Dockerfile",
        "compose.yaml",
        "otelcol.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/collector.yaml",
        "operator/Dockerfile",
        "operator/instrumentation.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


# -- the variables each file sets for the app --------------------------------------------


def k8s_env_lists() -> list[tuple[str, list[dict]]]:
    """Every env list of a container (Deployments) or of an Instrumentation."""
    found = []
    for path in YAML_FILES:
        for doc in documents(path):
            where = f"{path.relative_to(DEPLOY)} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if doc.get("kind") == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    found.append((f"{where} {container['name']}", container.get("env", [])))
            elif doc.get("kind") == "Instrumentation":
                found.append((where, doc["spec"].get("env", [])))
                found.append((where + " python", doc["spec"].get("python", {}).get("env", [])))
    return found


def compose_environments() -> list[tuple[str, dict[str, str]]]:
    found = []
    for path in YAML_FILES:
        for doc in documents(path):
            for name, service in (doc.get("services") or {}).items():
                env = service.get("environment") or {}
                if isinstance(env, list):
                    env = dict(item.split("=", 1) for item in env)
                found.append((f"{path.relative_to(DEPLOY)} {name}", {k: str(v) for k, v in env.items()}))
    return found


def dockerfile_env(path: Path) -> dict[str, str]:
    """The variables of a Dockerfile's ENV instructions (key=value form)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for item in shlex.split(line.strip()[4:]):
                key, sep, value = item.partition("=")
                assert sep, f"{path}: use ENV key=value ({line!r})"
                env[key] = value
    return env


def agent_environments() -> list[tuple[str, dict[str, str]]]:
    """(where, variables) for every place the examples set the app's environment."""
    result = []
    for where, env_list in k8s_env_lists():
        values = {}
        helpers = set()
        for item in env_list:
            value = item.get("value", "")
            for name in K8S_REFERENCE.findall(value):
                assert name in values or name in helpers, f"{where}: $({name}) used before it is defined"
            value = K8S_REFERENCE.sub(lambda m: f"value-of-{m.group(1).lower()}", value)
            if "valueFrom" in item:
                helpers.add(item["name"])
            values[item["name"]] = value
        used = {name for item in env_list for name in K8S_REFERENCE.findall(item.get("value", ""))}
        for name in helpers:
            assert name in used, f"{where}: {name} is set for no agent variable"
            values.pop(name)  # a downward-API helper for another variable's value
        result.append((where, values))
    result += compose_environments()
    result += [(str(path.relative_to(DEPLOY)), dockerfile_env(path)) for path in DOCKERFILES]
    return result


@pytest.mark.parametrize("where, env", agent_environments(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_variable_set_is_honoured_and_valid(where, env):
    unknown = set(env) - honoured()
    assert not unknown, f"{where} sets variables the agent does not read: {sorted(unknown)}"
    settings = config.read(env)
    assert not settings.warnings, f"{where}: {settings.warnings}"


def test_the_app_examples_are_activated_and_named():
    (_, image) = [item for item in agent_environments() if item[0] == "Dockerfile"][0]
    assert image["AUTOTRACE_ENABLED"] == "true" and image["OTEL_SERVICE_NAME"] == "shop"
    deployment = dict(agent_environments())["kubernetes/deployment.yaml Deployment shop shop"]
    assert deployment["AUTOTRACE_ENABLED"] == "true"


def test_kubernetes_resource_attributes_come_from_the_downward_api():
    (deployment,) = [d for d in documents(DEPLOY / "kubernetes" / "deployment.yaml") if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    fields = {name: item["valueFrom"]["fieldRef"]["fieldPath"] for name, item in env.items() if "valueFrom" in item}
    attributes = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(","))
    wanted = {"k8s.pod.name": "metadata.name", "k8s.namespace.name": "metadata.namespace", "k8s.node.name": "spec.nodeName"}
    for attribute, field in wanted.items():
        (helper,) = K8S_REFERENCE.findall(attributes[attribute])
        assert fields[helper] == field, attribute
    # Where the spans go: the collector's Service, on its OTLP/HTTP port.
    (service,) = [d for d in documents(DEPLOY / "kubernetes" / "collector.yaml") if d["kind"] == "Service"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == f"http://{service['metadata']['name']}:4318"
    assert 4318 in [port["port"] for port in service["spec"]["ports"]]


def test_the_collector_pipeline():
    (otelcol,) = documents(DEPLOY / "otelcol.yaml")
    pipeline = otelcol["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(otelcol["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert pipeline["processors"][0] == "memory_limiter"  # first, as the collector's docs ask
    assert "batch" in pipeline["processors"]
    for name in pipeline["processors"]:
        assert name in otelcol["processors"]
    for name in pipeline["exporters"]:
        assert name.split("/")[0] in ("otlp", "otlphttp") and name in otelcol["exporters"]
    for name in otelcol["service"].get("extensions", []):
        assert name in otelcol["extensions"]


def test_compose_wires_app_collector_and_backend():
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    shop = services["shop"]
    assert (DEPLOY / shop["build"]["context"] / shop["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    collector = services["otel-collector"]
    source, target, _ = collector["volumes"][0].split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "otelcol.yaml"
    assert collector["command"] == [f"--config={target}"]
    endpoint = shop["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.startswith("http://otel-collector:")
    (otelcol,) = documents(DEPLOY / "otelcol.yaml")
    backend = otelcol["exporters"]["otlp"]["endpoint"].split(":")[0]
    assert backend in services


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_dockerfile_sources_exist(path):
    """COPY sources (relative to the repository's root, the build context) exist, the
    wheel excepted (built by ``python -m build`` into dist/)."""
    for line in path.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            source = line.split()[1]
            if source.startswith("dist/"):
                assert source.endswith(".whl")
                continue
            assert (ROOT / source).exists(), f"{path}: {source}"


def test_the_operator_image_lays_out_sitecustomize_where_the_operator_looks():
    text = (DEPLOY / "operator" / "Dockerfile").read_text()
    # The operator copies /autoinstrumentation/. into /otel-auto-instrumentation-python and
    # puts .../opentelemetry/instrumentation/auto_instrumentation first on PYTHONPATH.
    assert "/autoinstrumentation/opentelemetry/instrumentation/auto_instrumentation/sitecustomize.py" in text
    assert "pip install --no-cache-dir --target /autoinstrumentation" in text
    shipped = ROOT / "sitecustomize" / "sitecustomize.py"  # shipped as autotrace/_sitecustomize/
    assert shipped.exists() and "cp /autoinstrumentation/autotrace/_sitecustomize/sitecustomize.py" in text
    (instrumentation,) = [d for d in documents(DEPLOY / "operator" / "instrumentation.yaml") if d["kind"] == "Instrumentation"]
    assert instrumentation["spec"]["python"]["image"]
    (deployment,) = [d for d in documents(DEPLOY / "operator" / "instrumentation.yaml") if d["kind"] == "Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["instrumentation.opentelemetry.io/inject-python"] == "true"

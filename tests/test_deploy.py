"""deploy/: the Kubernetes manifests against Kubernetes' own schemas (kubernetes-validate bundles them, so
this runs offline), the references between them, and the image definition against the README."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
# An older Kubernetes release and the newest whose schemas the validator bundles.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in YAML(typ="safe").load_all(path.read_text()) if doc]
    return docs


def one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    checked = []
    for name, doc in manifests():
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the field
        checked.append((name, doc["kind"]))
    assert sorted(kind for _, kind in checked) == sorted([
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "ConfigMap",
        "PersistentVolumeClaim", "Deployment", "Service",
    ])


def test_the_validator_refuses_a_wrong_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are both refused."""
    deployment = one("Deployment")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[0], strict=True)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = YAML(typ="safe").load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_manifests_refer_to_each_other() -> None:
    sa, role, binding, secret = one("ServiceAccount"), one("ClusterRole"), one("ClusterRoleBinding"), one("Secret")
    deployment, service, config = one("Deployment"), one("Service"), one("ConfigMap")
    namespace = one("Namespace")["metadata"]["name"]
    for _, doc in manifests():
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    # RBAC: the service account may read the cluster's JWKS (and nothing else).
    assert role["rules"] == [{"nonResourceURLs": ["/.well-known/openid-configuration", "/openid/v1/jwks"],
                              "verbs": ["get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": namespace}]
    # TOKEN: the service account's token, from the Secret Kubernetes fills in for it.
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == sa["metadata"]["name"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # The run config: the ConfigMap's run.yaml, mounted where the container's command reads it.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_path = container["args"][1]
    assert container["args"][0] == "serve"
    assert volumes[mounts[str(Path(config_path).parent)]]["configMap"]["name"] == config["metadata"]["name"]
    assert Path(config_path).name in config["data"]
    # The Service reaches the pods by their labels and the container's named port.
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_the_configmap_holds_the_kubernetes_example() -> None:
    """One run config: examples/kubernetes.yaml (validated in test_examples.py) is what the pod serves."""
    run_yaml = one("ConfigMap")["data"]["run.yaml"]
    assert run_yaml == (ROOT / "examples" / "kubernetes.yaml").read_text()


def test_replicas_are_what_the_quota_store_allows() -> None:
    run = YAML(typ="safe").load(one("ConfigMap")["data"]["run.yaml"])
    store = run["server"]["quota"]["kvstore"]["type"]
    deployment = one("Deployment")
    # SQLite counters are exact only among the processes of one host, on one ReadWriteOnce volume.
    assert store == "sqlite"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    state = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["state"]
    assert "persistentVolumeClaim" in state


def test_probes_use_public_routes() -> None:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    # Track 14a adds dedicated liveness/readiness routes; until then: version (alive) and health (ready).
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# ---- the image definition -----------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def build_args() -> dict[str, str]:
    args = {}
    for op, rest in instructions():
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = shlex.split(value)[0] if value else ""
    return args


def readme_install() -> list[str]:
    """The packages of the README's `pip install` by name (what a user runs once it is released)."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("### Installing by name", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    (line,) = [ln.split("#")[0] for ln in quick.splitlines() if ln.startswith("pip install ")]
    return shlex.split(line)[2:]


def image_install_command() -> list[str]:
    """The image's pip install, with the build arguments at their defaults."""
    (run,) = [rest for op, rest in instructions() if op == "RUN" and "pip install" in rest]
    command = run.split("&&")[0]
    for key, value in build_args().items():
        command = command.replace("${" + key + "}", value)
    return shlex.split(command)


def test_image_is_multi_stage_non_root_with_a_health_check() -> None:
    ops = instructions()
    froms = [rest for op, rest in ops if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    final = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM"):]
    (user,) = [rest for op, rest in final if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert any(op == "HEALTHCHECK" for op, _ in final)
    assert ("COPY", "--from=build /opt/stackd /opt/stackd") in final


def test_image_installs_exactly_what_the_readme_says() -> None:
    command = image_install_command()
    assert command[:4] == ["/opt/stackd/bin/pip", "install", "--find-links", "/tmp/dist"]
    packages = command[4:]
    assert packages[0] == "stackd-server"  # the core's distribution (PyPI's `stackd` is another project); no extras
    assert packages[1:] == readme_install() == ["stackd-provider-ollama"]


def test_image_health_check_passes_on_a_serving_stackd(
    echo_config: Path, stackd_serve: Callable[..., Any]
) -> None:
    """The HEALTHCHECK command, run as the image runs it, against a real server: 0 when it is healthy,
    1 when nothing answers."""
    final_hc = next(rest for op, rest in instructions() if op == "HEALTHCHECK")
    exec_form = json.loads(final_hc.split("CMD", 1)[1])
    assert exec_form[0] == "python"
    proc = stackd_serve(str(echo_config), "--port", "0")
    url = proc.wait_serving()
    port = url.rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, *exec_form[1:]], env={"STACKD_PORT": port}, timeout=60, check=False)
    assert ok.returncode == 0
    proc.stop()
    down = subprocess.run([sys.executable, *exec_form[1:]], env={"STACKD_PORT": port}, capture_output=True,
                          timeout=60, check=False)
    assert down.returncode == 1

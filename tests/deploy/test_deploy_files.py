"""The cluster launch files in deploy/: the `ray up` configs satisfy the JSON schema shipped in the
installed Ray wheel and give the trainer the node types it targets, token authentication stays on,
the dashboard stays on the head's loopback, and the KubeRay RayJob runs an existing config.
Nothing here starts Ray or talks to a cloud."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
RAY_UP_FILES = {"aws.yaml": "aws", "gcp.yaml": "gcp"}
ALL_DEPLOY_FILES = [*RAY_UP_FILES, "rayjob.yaml"]
CUSTOM = ("env_node", "learner_node")


def ray_schema() -> dict:
    """ray/autoscaler/ray-schema.json from the installed wheel (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"no schema at {path}"
    return json.loads(path.read_text())


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def node_types(config: dict) -> dict:
    return config["available_node_types"]


def commands_of(config: dict) -> list[str]:
    """Every shell command the launcher runs, global and node-type specific."""
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in config.get(k) or []]
    for spec in node_types(config).values():
        cmds += [c for k in keys for c in spec.get(k) or []]
    return cmds


def setup_for(config: dict, type_name: str) -> list[str]:
    """The setup commands a node of this type runs, as the launcher resolves them."""
    spec = node_types(config)[type_name]
    if type_name == config["head_node_type"]:
        return config.get("setup_commands", []) + config.get("head_setup_commands", [])
    if "worker_setup_commands" in spec:  # a node type's own list replaces the global ones
        return spec["worker_setup_commands"]
    return config.get("setup_commands", []) + config.get("worker_setup_commands", [])


def split_types(config: dict) -> tuple[str, list[str], list[str]]:
    head = config["head_node_type"]
    workers = {n: s for n, s in node_types(config).items() if n != head}
    gpu = [n for n, s in workers.items() if s["resources"].get("GPU", 0) > 0]
    cpu = [n for n in workers if n not in gpu]
    return head, cpu, gpu


# ---- the `ray up` configs --------------------------------------------------------------------

@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_config_satisfies_the_wheel_schema(name):
    jsonschema.validate(load(name), ray_schema())


def test_the_schema_check_rejects_a_broken_config():
    """The validation above has teeth: misspelt fields and non-integer resources fail."""
    schema = ray_schema()
    broken = load("aws.yaml")
    broken["max_worker"] = broken.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = load("aws.yaml")
    broken["available_node_types"]["gpu_learner"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("name,provider", RAY_UP_FILES.items())
def test_provider_and_auth(name, provider):
    config = load(name)
    assert config["cluster_name"]
    assert config["provider"]["type"] == provider
    assert config["provider"].get("region")
    if provider == "gcp":
        assert config["provider"].get("project_id") and config["provider"].get("availability_zone")
    assert config["auth"].get("ssh_user")


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_node_types_the_trainer_targets(name):
    config = load(name)
    head, cpu, gpu = split_types(config)
    assert head == "head" and head in node_types(config)
    assert not set(CUSTOM) & set(node_types(config)[head]["resources"]), "the head must advertise no custom resource"

    assert len(gpu) == 1, f"want exactly one GPU node type, got {gpu}"
    learner = node_types(config)[gpu[0]]["resources"]
    assert learner.get("GPU") == 1 and learner.get("learner_node") == 1 and learner.get("CPU", 0) >= 1
    assert "env_node" not in learner

    env_types = [n for n in cpu if node_types(config)[n]["resources"].get("env_node") == 1]
    assert env_types, "want a CPU worker type advertising env_node"
    for n in env_types:
        res = node_types(config)[n]["resources"]
        assert res.get("CPU", 0) >= 8 and "learner_node" not in res and res.get("GPU", 0) == 0


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_autoscaling_bounds(name):
    config = load(name)
    head, cpu, gpu = split_types(config)
    assert isinstance(config["max_workers"], int) and config["max_workers"] >= 1
    for n in cpu + gpu:
        spec = node_types(config)[n]
        assert isinstance(spec.get("min_workers"), int) and isinstance(spec.get("max_workers"), int), n
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"], n
    assert node_types(config)[gpu[0]]["max_workers"] == 1
    assert max(node_types(config)[n]["max_workers"] for n in cpu) > 1
    assert node_types(config)[head].get("max_workers", 0) == 0


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_every_node_installs_the_pinned_project(name):
    config = load(name)
    head, cpu, gpu = split_types(config)
    for n in [head, *cpu, *gpu]:
        setup = setup_for(config, n)
        project = [i for i, c in enumerate(setup) if 'torch==2.13.0 -e .' in c]
        assert project, f"{n}: no `pip install torch==2.13.0 -e .` in its setup"
        assert any("~/continual-ewc" in c for c in setup[: project[0] + 1]), n
    # The GPU node installs the CUDA build of the same torch from PyTorch's CUDA index first.
    setup = setup_for(config, gpu[0])
    cuda = [i for i, c in enumerate(setup)
            if "torch==2.13.0" in c and re.search(r"--index-url https://download\.pytorch\.org/whl/cu\d+", c)]
    project = [i for i, c in enumerate(setup) if 'torch==2.13.0 -e .' in c]
    assert cuda and cuda[0] < project[0]
    for n in cpu:
        assert not any("download.pytorch.org/whl/cu" in c for c in setup_for(config, n)), n


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_working_copy_and_token_are_shipped(name):
    config = load(name)
    mounts = config["file_mounts"]
    assert mounts.get("~/continual-ewc") == "."
    assert (ROOT / "run.py").is_file()  # `.` is the repository root `ray up` runs from
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_starts_in_token_mode_with_a_loopback_dashboard(name):
    config = load(name)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    for start in (head_start, worker_start):
        assert re.search(r"RAY_AUTH_MODE=token\s+ray start", start), start
    assert "--head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in worker_start
    for cmd in commands_of(config):
        assert "0.0.0.0" not in cmd, cmd
        assert "RAY_AUTH_TOKEN=" not in cmd, "the token travels as a file, never on a command line"


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_commands_are_valid_bash(name):
    for cmd in commands_of(load(name)):
        proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, f"{cmd!r}: {proc.stderr}"


@pytest.mark.parametrize("name", ALL_DEPLOY_FILES)
def test_token_auth_is_never_disabled(name):
    text = (DEPLOY / name).read_text()
    assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", text), name
    assert not re.search(r"^\s*mode:\s*[\"']?disabled", text, re.MULTILINE), name
    for doc in yaml.safe_load_all(text):
        for env in _find_key(doc, "env"):
            for var in env if isinstance(env, list) else []:
                if var.get("name") == "RAY_AUTH_MODE":
                    assert var.get("value") == "token", var


def _find_key(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _find_key(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _find_key(item, key)


# ---- the KubeRay RayJob ----------------------------------------------------------------------

def rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, [d.get("kind") for d in docs]
    return jobs[0]


def custom_resources(group: dict) -> dict:
    """rayStartParams.resources is KubeRay's quoted JSON string: '"{\\"env_node\\": 1}"'."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    return json.loads(shlex.split(raw)[0])


def test_rayjob_runs_an_existing_config():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "run.py", "train"], argv
    config = argv[argv.index("--config") + 1]
    assert config.startswith("configs/") and (ROOT / config).is_file(), config
    assert argv[argv.index("--logdir") + 1] == "/data/runs"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and ({"working_dir", "pip"} & set(runtime_env))


def test_rayjob_cluster_groups_and_auth():
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert spec.get("authOptions", {}).get("mode") == "token"
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert not set(CUSTOM) & set(custom_resources(head))

    groups = spec["workerGroupSpecs"]
    def gpus(group):
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        return int(limits.get("nvidia.com/gpu", 0))
    gpu_groups = [g for g in groups if gpus(g) > 0]
    assert len(gpu_groups) == 1 and gpus(gpu_groups[0]) == 1
    assert custom_resources(gpu_groups[0]) == {"learner_node": 1}
    assert gpu_groups[0]["maxReplicas"] == 1
    cpu_groups = [g for g in groups if gpus(g) == 0]
    assert any(custom_resources(g) == {"env_node": 1} for g in cpu_groups)
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["maxReplicas"], g["groupName"]
        assert g["template"]["spec"]["containers"][0]["image"]


def test_rayjob_run_directory_is_a_persistent_volume_on_the_head():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()) if d]
    claims = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    pod = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
    assert "/data/runs" in mounts
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/data/runs"])
    assert volume["persistentVolumeClaim"]["claimName"] in claims


# ---- the walkthrough ---------------------------------------------------------------------------

def test_cluster_doc_names_the_commands():
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needle in ("ray up deploy/aws.yaml", "ray dashboard deploy/aws.yaml", "ray job submit",
                   "RAY_AUTH_MODE=token", "ray get-auth-token --generate", "tensorboard",
                   "kubectl apply -f deploy/rayjob.yaml", "deploy/gcp.yaml"):
        assert needle in text, needle
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", text)

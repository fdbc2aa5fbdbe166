"""cluster.yaml passes Ray's own cluster-config validation; broken copies fail with Ray's message; its
security choices (only SSH open, Ray token auth on, MLflow on PostgreSQL on loopback) stay in it."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

import search  # noqa: F401  (Ray's environment defaults before importing ray)

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))  # the AWS provider needs no credentials here
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_for_ray(cluster):
    prepared = ray_validate(cluster)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials stay off the head
    assert workers and all(w["resources"].get("GPU", 0) >= 1 and w["min_workers"] == 0 for w in workers)
    assert all(w["max_workers"] > 0 for w in workers)  # autoscaling GPU workers


def test_cluster_yaml_runs_mlflow_on_the_head_and_installs_the_project(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head_start and "mlflow server" in head_start
    assert "--artifacts-destination" in head_start and "--default-artifact-root" not in head_start
    setup = cluster["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch" in c)
    project_at = next(i for i, c in enumerate(setup) if "pip install -e ~/ulmfit-search" in c)
    assert torch_at < project_at  # torch first, so the project's dependencies never pull another one
    assert "/home/ubuntu/ulmfit-search" in cluster["file_mounts"]


COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def _commands(cluster: dict) -> list[str]:
    return [c for key in COMMAND_LISTS for c in cluster.get(key) or []]


def test_only_ssh_is_opened_to_the_outside(cluster):
    group = cluster["provider"]["security_group"]
    assert group["GroupName"]
    assert group["IpPermissions"], "no rule: Ray would still add SSH, but the intent belongs in the file"
    for rule in group["IpPermissions"]:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
    # A node type with its own SecurityGroupIds would bypass this group.
    assert all("SecurityGroupIds" not in t["node_config"] for t in cluster["available_node_types"].values())
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_ray_token_auth_stays_on_with_one_token_on_every_node(cluster):
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", text)
    starts = [c for c in _commands(cluster) if "ray start" in c]
    assert len(starts) == 2  # head and workers
    assert all("RAY_AUTH_MODE=token" in c for c in starts)  # `ray start --address` never turns it on alone
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cluster["setup_commands"])


def test_mlflow_runs_on_postgresql_on_the_head_loopback(cluster):
    head_setup = " ".join(cluster["head_setup_commands"])
    assert "apt-get install" in head_setup and "postgresql" in head_setup
    assert "psycopg2-binary" in head_setup and "createdb -O mlflow mlflow" in head_setup
    (server,) = [c for c in cluster["head_start_ray_commands"] if "mlflow server" in c]
    uri = re.search(r"--backend-store-uri (\S+)", server).group(1)
    assert uri == "postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"  # no password: it is in ~/.pgpass
    assert "--host 127.0.0.1" in server and "sqlite" not in server
    assert "--artifacts-destination /mnt/shared/mlartifacts" in server
    # The role's password never appears on a command line (stdin and ~/.pgpass only).
    assert not any(re.search(r"psql[^|]*-c[^|]*PASSWORD", c) for c in _commands(cluster))


@pytest.mark.skipif(not shutil.which("bash"), reason="bash missing")
def test_every_command_is_valid_bash(cluster):
    for command in _commands(cluster):
        check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert check.returncode == 0, f"{command}\n{check.stderr}"


def _unknown_top_level_key(c):
    c["max_worker"] = 3


def _head_type_not_declared(c):
    c["head_node_type"] = "nope"


def _min_workers_above_max(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = 20


def _resources_not_a_mapping(c):
    c["available_node_types"]["gpu_worker"]["resources"] = "GPU=1"


def _security_group_unknown_key(c):
    c["provider"]["security_group"]["OpenPorts"] = [6379]


@pytest.mark.parametrize("break_it, error, message", [
    (_unknown_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
    (_head_type_not_declared, ValueError, "`head_node_type` must be one of `available_node_types`"),
    (_min_workers_above_max, ValueError, "smaller than the sum of `min_workers`"),
    (_resources_not_a_mapping, jsonschema.ValidationError, "'GPU=1' is not of type 'object'"),
    (_security_group_unknown_key, jsonschema.ValidationError, "'OpenPorts' was unexpected"),
])
def test_broken_copies_fail_with_rays_message(cluster, tmp_path, break_it, error, message):
    broken = copy.deepcopy(cluster)
    break_it(broken)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(broken))  # a real broken file, read back as `ray up` would
    with pytest.raises(error) as e:
        ray_validate(yaml.safe_load(path.read_text()))
    assert message in str(e.value)

"""cluster.yaml passes Ray's own cluster-config validation; broken copies fail with Ray's message."""
from __future__ import annotations

import copy
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


def _unknown_top_level_key(c):
    c["max_worker"] = 3


def _head_type_not_declared(c):
    c["head_node_type"] = "nope"


def _min_workers_above_max(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = 20


def _resources_not_a_mapping(c):
    c["available_node_types"]["gpu_worker"]["resources"] = "GPU=1"


@pytest.mark.parametrize("break_it, error, message", [
    (_unknown_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
    (_head_type_not_declared, ValueError, "`head_node_type` must be one of `available_node_types`"),
    (_min_workers_above_max, ValueError, "smaller than the sum of `min_workers`"),
    (_resources_not_a_mapping, jsonschema.ValidationError, "'GPU=1' is not of type 'object'"),
])
def test_broken_copies_fail_with_rays_message(cluster, tmp_path, break_it, error, message):
    broken = copy.deepcopy(cluster)
    break_it(broken)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(broken))  # a real broken file, read back as `ray up` would
    with pytest.raises(error) as e:
        ray_validate(yaml.safe_load(path.read_text()))
    assert message in str(e.value)

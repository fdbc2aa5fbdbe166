"""The cluster's tracking store: an ``mlflow server`` backed by PostgreSQL, as cluster.yaml runs it on
the head node (SQLite on the cluster's NFS is unsafe with several writers).

A real PostgreSQL server on 127.0.0.1 (tests/postgres_server.py; Debian's ``postgresql`` package, which
``.ci/run`` installs) and a real ``mlflow server`` on it with the same password-less URI as cluster.yaml
(the password comes from a ``.pgpass``, never from a command line); a small real search is tracked
through it; the runs are read back through MLflow and straight from PostgreSQL. Both servers are
started here and stopped here.
"""
from __future__ import annotations

import importlib.util

import pytest
from conftest_search import child_runs, free_port, mlflow_server_process, parent_runs, ray_env, smoke_config  # noqa: F401
from postgres_server import missing_reason, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def postgres():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 missing: pip install -e '.[test]' (psycopg2-binary)")
    with postgres_server(free_port()) as pg:
        yield pg


def _count(pg, sql: str) -> int:
    import psycopg2

    with psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, dbname=pg.database,
                          passfile=str(pg.pgpass)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_a_search_tracked_by_an_mlflow_server_on_postgresql(tmp_path, datasets_dir, ray_env, postgres):
    from mlflow.tracking import MlflowClient

    from search import tuner

    with mlflow_server_process(postgres.uri, tmp_path, env={"PGPASSFILE": str(postgres.pgpass)}) as uri:
        cfg = smoke_config(tmp_path, ["search.num_samples=2", "recipe.classifier.epochs=2", "search.name=pg",
                                      "search.scheduler={type: fifo}"], tracking_uri=uri)
        outcome = tuner.run_search(cfg)
        import ray

        ray.shutdown()
        assert outcome.status == "finished"
        (parent,) = parent_runs(uri, "pg")
        assert parent.data.tags["search_status"] == "finished"
        runs = child_runs(uri, "pg")
        assert len(runs) == 2
        client = MlflowClient(uri)
        for run in runs:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.tags["trial_status"] == "completed"
            for metric in ("valid_accuracy", "valid_loss"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2]

        # The records are in PostgreSQL itself (not in a fallback store beside the server).
        assert _count(postgres, "SELECT count(*) FROM runs") == 3
        assert _count(postgres, "SELECT count(*) FROM metrics WHERE key = 'valid_accuracy'") == 4
        assert _count(postgres, "SELECT count(*) FROM experiments WHERE name = 'pg'") == 1

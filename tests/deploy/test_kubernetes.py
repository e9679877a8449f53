"""The Kubernetes manifests (deploy/k8s): every overlay renders with ``kubectl kustomize``, every
object validates against Kubernetes' own schemas (``kubernetes-validate``), each KEDA
ScaledObject against KEDA's published CRD schema (kept in deploy/k8s/crds), and each
ScaledObject's query counts, on a real PostgreSQL, exactly the unfinished jobs of the endpoints
its worker Deployment serves.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import insert, text

from fastsvd.endpoints import ENDPOINTS
from fastsvd.store.db import Database
from fastsvd.store.jobs import JobState
from fastsvd.store.migrations import migrate
from fastsvd.store.tables import jobs
from tests.databases import postgres_database

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.32.0"
CUSTOM_KINDS = {"ScaledObject"}  # not Kubernetes' own: checked against its CRD below
GRACE_MARGIN_S = 60  # terminationGracePeriodSeconds - FASTSVD_DRAIN_S, for the last step


@functools.cache
def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "the manifests' tests need kubectl (1.32, with kustomize 5.5)"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_env(deployment: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the first container sees: its ConfigMaps and Secrets, then its env."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(of_kind(docs, "ConfigMap")[source["configMapRef"]["name"]]["data"])
        else:
            env.update(of_kind(docs, "Secret")[source["secretRef"]["name"]]["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def scaled_workers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each ScaledObject with the Deployment it scales."""
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    return [
        (so, deployments[so["spec"]["scaleTargetRef"]["name"]])
        for so in of_kind(docs, "ScaledObject").values()
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str) -> None:
    crd = yaml.safe_load_all((K8S / "crds" / "keda.sh_scaledobjects.yaml").read_text())
    (version,) = next(d for d in crd if d)["spec"]["versions"]
    keda_schema = version["schema"]["openAPIV3Schema"]
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds
    assert "ScaledObject" in kinds
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            jsonschema.validate(doc, keda_schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_wrong_field_fails_validation() -> None:
    """The checks above can fail: a misspelt field is caught by each validator."""
    deployment = of_kind(render(OVERLAYS[0]), "Deployment")["fastsvd-api"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    crd = yaml.safe_load_all((K8S / "crds" / "keda.sh_scaledobjects.yaml").read_text())
    schema = next(d for d in crd if d)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    so = json.loads(json.dumps(scaled_workers(OVERLAYS[0])[0][0]))
    so["spec"]["minReplicaCount"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_worker_gpus_and_grace(overlay: str) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    (api,) = deployments["fastsvd-api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["args"][0] == "serve"
    pdbs = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in of_kind(docs, "PodDisruptionBudget").values()
    }
    for so, worker in scaled_workers(overlay):
        spec = worker["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"] == ["worker"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        drain_s = float(container_env(worker, docs)["FASTSVD_DRAIN_S"])
        assert spec["terminationGracePeriodSeconds"] >= drain_s + GRACE_MARGIN_S
        assert worker["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] in pdbs
        # scaling to zero is the operator's choice (components/scale-to-zero), not the default
        assert so["spec"]["minReplicaCount"] >= 1


def test_the_scale_to_zero_component(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                # kustomize takes relative paths only
                "resources": [os.path.relpath(K8S / "overlays" / "external", overlay)],
                "components": [os.path.relpath(K8S / "components" / "scale-to-zero", overlay)],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {so["spec"]["minReplicaCount"] for so in of_kind(docs, "ScaledObject").values()} == {0}
    (api,) = of_kind(docs, "Deployment")["fastsvd-api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"


def test_each_query_counts_the_unfinished_jobs_of_its_workers_endpoints() -> None:
    """Jobs of every endpoint, in every state, on a real PostgreSQL: each ScaledObject's query
    answers what its worker Deployment (FASTSVD_ENDPOINTS) could still run or is running."""
    states = [JobState.queued, JobState.running, JobState.completed]
    rows, n = [], 0
    for i, endpoint in enumerate(ENDPOINTS.ids()):
        for j, state in enumerate(states):
            for _ in range(1 + (i + j) % 3):  # different counts everywhere
                n += 1
                rows.append(
                    {
                        "id": str(uuid.uuid4()),
                        "key_id": "k",
                        "endpoint": endpoint,
                        "input": "{}",
                        "state": state.value,
                        "priority": n % 2,
                        "created_at": float(n),
                    }
                )
    checked = 0
    with postgres_database() as url:
        db = Database(url)
        migrate(db)
        with db.write() as conn:
            conn.execute(insert(jobs), rows)
        try:
            for overlay in OVERLAYS:
                docs = render(overlay)
                for so, worker in scaled_workers(overlay):
                    served = container_env(worker, docs)["FASTSVD_ENDPOINTS"].split(",")
                    assert set(served) <= set(ENDPOINTS.ids())
                    expected = sum(
                        1
                        for r in rows
                        if r["endpoint"] in served and r["state"] != JobState.completed
                    )
                    (trigger,) = so["spec"]["triggers"]
                    assert trigger["type"] == "postgresql"
                    assert trigger["metadata"]["connectionFromEnv"] == "FASTSVD_DATABASE_URL"
                    with db.read() as conn:
                        got = conn.scalar(text(trigger["metadata"]["query"]))
                    assert got == expected, (overlay, so["metadata"]["name"])
                    checked += 1
        finally:
            db.dispose()
    assert checked >= 3  # two worker kinds in the external layout, one on a single node

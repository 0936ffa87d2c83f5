"""Validates every document of rendered manifests against the Kubernetes JSON schemas that
kubernetes-validate ships, strictly (an unknown field fails).

Usage: python validate_schemas.py KUBERNETES_VERSION FILE...

Kinds outside Kubernetes itself (the Prometheus operator's ServiceMonitor and
PrometheusRule) have no schema here: each is named on a SKIPPED line, never passed over
silently; tests/test_chart.py checks their content instead.
"""

import sys

import yaml
from kubernetes_validate import utils

# Custom resources of the Prometheus operator: no schema is vendored for them.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def main(version, files):
    failed = validated = skipped = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM:
                print(f"SKIPPED schema {name} ({doc['apiVersion']} is a custom resource; no schema vendored, content asserted by test_chart.py)")
                skipped += 1
                continue
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as e:
                path_in_doc = ".".join(str(p) for p in e.path)
                print(f"INVALID {name}: {path_in_doc}: {e.message}")
                failed += 1
                continue
            except utils.SchemaNotFoundError as e:
                print(f"INVALID {name}: {e.message}")
                failed += 1
                continue
            validated += 1
    print(f"schemas (Kubernetes {version}, strict): {validated} valid, {failed} invalid, {skipped} skipped")
    return 1 if failed or not validated else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))

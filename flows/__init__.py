"""Prefect orchestration of the s4d-ops pipeline (`flows.retrain.retrain`; deployments in prefect.yaml)."""

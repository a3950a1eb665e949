"""Deployment infrastructure: infra/local (the local Prefect stack), infra/gpu (GPU box and cluster configs)."""

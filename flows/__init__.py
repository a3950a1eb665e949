"""Prefect flows of the d1 pipeline (thin: the logic lives in d1.orchestration).

``d1-full`` (flows/d1_full.py) runs the stages of dvc.yaml; ``d1-stage``
(flows/d1_stage.py) runs one stage in a checkout on another work pool.
Deployments: prefect.yaml; local server, pools and workers: ``python -m infra.local``.
"""

"""Orchestration of the DVC pipeline with Prefect (the code behind flows/ and infra/local).

``graph`` (the resolved DVC stage graph), ``params`` (flow parameters into
params.yaml), ``dvc_ops`` (status, pull, repro, push, dvc.lock), ``stages``
(one stage here or on another pool), ``pipeline`` (the d1-full flow body),
``observe`` (assets and artifacts), ``stack`` (the local Prefect stack),
``oneshot`` (the README's main command: run a deployment, wait, report).
Imports of Prefect and DVC are made where they are used.
"""

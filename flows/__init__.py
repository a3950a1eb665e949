"""Orchestration of the d1 pipeline: Prefect flows over the DVC stage graph.

Flow entry points (deployments in prefect.yaml): ``d1_full`` (flow ``d1-full``,
every stage of dvc.yaml for a profile, each on the work pool it needs) and
``d1_stage`` (flow ``d1-stage``, one stage in a checkout on another pool).
The modules they use: ``graph`` (the resolved DVC stage graph), ``params``
(flow parameters into params.yaml), ``dvc_ops`` (status, pull, repro, push,
dvc.lock), ``stages`` (one stage here or on another pool), ``pipeline`` (the
d1-full flow body), ``observe`` (assets and artifacts), ``config`` (the
``flow`` section of a profile: work pool per stage).

This package imports ``d1``; ``d1`` never imports it, Prefect or DVC. The local
stack (server, pools, workers) is ``infra.local``.
"""

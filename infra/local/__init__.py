"""The local Prefect stack (``python -m infra.local up|down|status|deploy|run``); see d1.orchestration.stack."""

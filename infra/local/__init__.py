"""The local Prefect stack (``python -m infra.local up|down|status|deploy|run``); see infra.local.stack."""

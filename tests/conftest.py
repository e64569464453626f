import os

# Tests never reach the network or send telemetry.
for key, value in {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                   "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)

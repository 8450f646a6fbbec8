"""The HTTP shell (FastAPI): today `serve`'s /metrics and /healthz; the REST API with roles
and approvals grows here on the same service functions the CLI calls."""

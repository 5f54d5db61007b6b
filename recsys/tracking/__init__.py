"""The only code that talks to MLflow: runs, params, artifacts, registry, aliases."""

"""sightwise.registry: MLflow run tracking and a model registry for bundles.

- `tracking.log_run`: log a train / export / benchmark run (params, metrics, artifacts, tags).
- `versions.register_bundle`, `versions.list_versions`: immutable per-version bundle copies in
  ``$SIGHTWISE_HOME/bundles/NAME/<version>/``, registered as MLflow model versions.
- `promote.promote`, `promote.rollback`: gated alias moves with a history.
- `resolve.resolve_bundle`, `resolve.current_version`: ``NAME@ALIAS`` / ``NAME/3`` / a path
  to a verified bundle folder.
- `cli.models_app`: the ``sightwise models`` commands.

Nothing here imports MLflow (or torch) at import time; the store is described in `store`.
"""

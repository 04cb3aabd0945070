"""sightwise.pipeline: stages with content-hash caching, gates, shadow evaluation (CI/CD for models)."""

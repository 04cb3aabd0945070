"""sightwise.serve: the HTTP API and web page over a bundle's ONNX graph (never torch).

Build the app with `sightwise.serve.app.create_app(bundle, ...)`; `sightwise serve` runs it
with uvicorn through `sightwise.serve.app.serve_main`. Modules: app (wiring and routes),
batching (dynamic batching), swap (the served model and hot-swap), limits (what requests
may contain), auth (bearer tokens), metrics (Prometheus), schemas (response shapes),
pages (web page, /docs, security headers), static/ (the page's files).
"""

"""sightwise.serve: the HTTP API and web page over a bundle's ONNX graph (never torch).

`create_app(ServeSettings(bundle=...))` builds the app (app.py); `sightwise serve` runs it
with uvicorn through `runner.serve_main`. Modules: settings (every knob, one record),
app (wiring), page_routes / predict_routes / admin_routes / search_routes /
inspect_routes (one router per surface), pipeline (upload -> deadline -> decode, shared
by every image route), uploads (multipart or raw body, header probe), budget (pixels
decoded at once), admission (in-flight and body-size limits), connections (header
timeout and connection bounds for uvicorn), hosts (Host/Origin allowlist), auth (bearer
tokens), batching (dynamic batching), swap (the served model and hot-swap), observers
(per-prediction hooks), metrics (Prometheus), errors (the JSON error shape), logs
(rate-limited warnings), schemas (response shapes), pages (web page, /docs, security
headers), static/ (the page's files).
"""

"""sightwise.monitor: prediction log, reference statistics, drift tests, label-free
accuracy, alerts (torch-free: numpy, scipy, onnxruntime).

- `reference`: reference.npz, the validation split's profile inside a bundle
- `log`: the durable, non-blocking prediction log (segments, retention, reader)
- `stats`, `windows`: the per-window tests, the family-wise p and the alert rule
- `alerts`: the labelling queue and the webhook
- `live`, `hooks`: what a predicting process wires in (MonitorLog, predict --log, serve)
- `report`: `monitor report` (JSON contract, table, HTML, drift plot, Prometheus gauges)
See docs/guides/monitoring.md.
"""

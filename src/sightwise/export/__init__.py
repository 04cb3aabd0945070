"""sightwise.export: ONNX export (fp32 and int8) of a bundle, with a parity gate.

The entry point is `sightwise.export.api.export_bundle`; `onnx_export` builds the graph,
`quantize` makes the int8 graph, `parity` holds the gate, `edge` writes the edge package.
"""

"""sightwise.scale: the same commands over folders of any size, on one machine or on Ray.

- `sources`: inputs (files, folders, CSV lists, globs) as a lazy stream of paths, and a
  bounded decode pool that runs ahead of the model;
- `batch`: batch-prediction rows and the single-machine engine;
- `output`: the CSV journal (fsynced per batch, resumable after kill -9) and Parquet;
- `ray_engine`: `--engine ray` on Ray Data (read_binary_files -> map_batches with an actor
  pool that loads the ONNX graph once per actor), imported lazily;
- `embed`, `inspect`: `index build` and `inspect score` on the same streams.

Torch-free, and Ray-free until `--engine ray` is asked for. Guide: docs/guides/scale.md.
"""

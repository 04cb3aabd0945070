"""Good-only defect inspection: a PatchCore-style memory bank (Roth et al., CVPR 2022),
heat maps and a false-alarm-rate threshold. Scoring (`detector`) is torch-free; fitting
(`fit`, `extractor`) imports torch."""

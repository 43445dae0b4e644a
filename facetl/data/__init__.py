"""Data path: files -> (path, label) table -> decoded uint8 store -> split -> batches."""

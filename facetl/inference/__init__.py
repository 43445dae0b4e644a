"""Using a trained run, beside training and independent of it: reopening a run folder (`run.py`), the run's
decision (`decision.py`), and one `Classifier` contract with two engines, torch on the run's checkpoint
(`classifiers.py`) and ONNX Runtime on an exported file (`onnx.py`); photos labelled one row per photo or per
face (`photos.py`), videos face by face (`video.py`, `video_files.py`) and both annotated (`annotate.py`).
Predict, evaluate, explain, export and serve use only this; training never imports it, and it never imports training (pyproject.toml's contracts)."""

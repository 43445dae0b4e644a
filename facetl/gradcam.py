"""Where a run's network looks: Grad-CAM overlays and feature-map grids, from nothing but the run folder.

Grad-CAM (Selvaraju et al. 2017) weighs each channel of a layer's output by the mean gradient of one
class's score over the channel, sums, and keeps the positive part: the places whose activation raises
that score. Captum's `LayerGradCam` computes it and `LayerAttribution.interpolate` brings it to the
image's size. The score is the logit (before sigmoid or softmax), as in the paper.

Images are prepared as the run prepares them (its record's `Preprocessing`: size, colour, mean/std,
and face alignment for a `--faces detect` run), and the whole model runs in eval mode with autograd on:
Grad-CAM needs gradients with respect to the layer's activations, not its parameters, so a layer in the
frozen part (parameters with requires_grad False) is explained as well as a trained one.

Nothing here knows about the command line: `facetl explain` (cli.py) collects the files and prints;
Nothing here knows about the command line: `facetl explain` (commands/explain.py) collects the files and
prints; `facetl evaluate` and training write `gradcam_gallery` next to the error gallery (TrainingPictures).
"""
from __future__ import annotations

import hashlib
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from facetl.data.augment import to_float
from facetl.data.images import UnreadableImage, decode_image
from facetl.data.store import recut_crop
from facetl.errors import FacetlError
from facetl.evaluate.plots import clip, short_name
from facetl.evaluate.predictions import SplitResult
from facetl.inference.decision import Decision
from facetl.inference.run import LoadedRun
from facetl.models.outputs import probabilities
from facetl.progress import progress_bar
from facetl.runfolder import atomic_write_bytes
from facetl.runtime import Runtime
from facetl.train.callbacks import Callback, FinalSplit, RunInfo


TOP_CHANNELS = 16      # feature-map grid: channels with the highest mean activation
BATCH = 16             # images per forward/backward: bounds memory on a CPU
ONE_LINE_EACH = 20     # up to this many images, one line per image written; more, a progress bar
OVERLAY_ALPHA = 0.6    # opacity of the hottest Grad-CAM value; colder values fade to the photo
COLORMAP = "turbo"


# --- what is explained: one score per class name ---------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A score Grad-CAM can explain: `sign * logits[:, column]`, named after what it is evidence for."""

    name: str
    column: int
    sign: float = 1.0


def run_targets(run: LoadedRun) -> list[Target]:
    """One target per class, in the run's class order (so target k goes with probability column k).

    - two classes, one logit (sigmoid): class 1 is `logit`, class 0 is `-logit`;
    - N classes, N logits (softmax): class k is logit k;
    - a multi-attribute run, K sigmoid outputs: attribute k is logit k (`--class ATTRIBUTE` picks it).
    """
    names = run.class_names
    if run.model.outputs == 1 and not run.record.multi_attribute:
        return [Target(names[0], 0, -1.0), Target(names[1], 0, 1.0)]
    return [Target(name, k) for k, name in enumerate(names)]


def target_scores(logits: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """(B, outputs) logits -> (B, targets) scores, the columns Grad-CAM differentiates."""
    columns = torch.tensor([t.column for t in targets], device=logits.device)
    signs = torch.tensor([t.sign for t in targets], device=logits.device, dtype=logits.dtype)
    return logits[:, columns] * signs


def target_index(run: LoadedRun, name: str) -> int:
    names = [t.name for t in run_targets(run)]
    if name not in names:
        kind = "attribute" if run.record.multi_attribute else "class"
        raise FacetlError(f"unknown {kind} {name!r}; this run's {kind}{'es' if kind == 'class' else 's'} are: "
                          f"{', '.join(names)}")
    return names.index(name)


# --- where: a layer of the backbone -------------------------------------------------------------------

# a smaller map has no "where" to show: at 32 px MobileNetV2's last stage is 1x1 and its Grad-CAM one colour
SMALLEST_MAP = 4


def default_layer(run: LoadedRun) -> str:
    """The last frozen stage when the run froze part of the backbone (what the trained part was given),
    else the last stage; or, where that stage's map is smaller than SMALLEST_MAP on a side at the run's
    image size, the deepest stage before it whose map is not."""
    stages, cut = len(run.model.backbone.features), run.record.cut
    last = (cut if 0 < cut < stages else stages) - 1
    sides = map_sides(run.model.backbone.features, run.record.preprocessing.size)
    return f"features.{next((k for k in range(last, -1, -1) if sides[k] >= SMALLEST_MAP), last)}"


def map_sides(features: nn.Sequential, size: int) -> list[int]:
    """The shorter side of each stage's output map for a size x size input (one forward of a blank image)."""
    first = next(m for m in features.modules() if isinstance(m, nn.Conv2d))
    x = torch.zeros(1, first.in_channels, size, size, device=first.weight.device, dtype=first.weight.dtype)
    was_training, sides = features.training, []
    features.eval()  # a train-mode pass would move batch-norm statistics
    with torch.inference_mode():
        for stage in features:
            x = stage(x)
            sides.append(min(x.shape[-2:]) if x.dim() == 4 else 0)
    features.train(was_training)
    return sides


def resolve_layer(run: LoadedRun, name: str | None) -> tuple[str, nn.Module]:
    """`features.K`, `backbone.features.K`, `K`, or a module inside a stage (`features.13.conv.0`)."""
    key = default_layer(run) if name is None else name.strip()
    key = key.removeprefix("backbone.")
    if key.isdigit():
        key = f"features.{key}"
    modules = dict(run.model.backbone.named_modules())
    if key.startswith("features.") and key in modules:
        return key, modules[key]
    stages = len(run.model.backbone.features)
    frozen = (f"; the frozen part is features.0 to features.{run.record.cut - 1}"
              if 0 < run.record.cut < stages else "")
    raise FacetlError(f"unknown layer {name!r}; choose a stage features.K, K = 0 to {stages - 1}{frozen} "
                      f"(or a module inside one, as `facetl backbones {run.config.backbone}` lists them)")


# --- the computation ----------------------------------------------------------------------------------

@dataclass
class GradCams:
    """Grad-CAM of a batch: probabilities, and maps in the image's pixels and at the layer's resolution."""

    probs: np.ndarray            # (B, classes)
    maps: np.ndarray             # (B, size, size), >= 0, bilinear from `raw`
    raw: np.ndarray              # (B, h, w), >= 0
    targets: list[int]           # the target index explained for each image
    activations: np.ndarray | None = None   # (B, C, h, w) the layer's output, when asked for


def grad_cam(run: LoadedRun, images: np.ndarray, runtime: Runtime, layer: str | None = None,
             targets: Sequence[int] | None = None, keep_activations: bool = False) -> GradCams:
    """Grad-CAM of `targets` (one target index per image; None: each image's predicted class) for (B, size,
    size, 3) uint8 images prepared by the run's preprocessing."""
    layer_name, module = resolve_layer(run, layer)
    # autograd on even if a caller switched it off: inference mode would make every tensor here unusable for it
    with torch.inference_mode(False), torch.enable_grad():
        return _grad_cam(run, images, runtime, layer_name, module, targets, keep_activations)


def _grad_cam(run: LoadedRun, images: np.ndarray, runtime: Runtime, layer_name: str, module: nn.Module,
              targets: Sequence[int] | None, keep_activations: bool) -> GradCams:
    model = run.model.to(runtime.device).eval()
    prep = run.record.preprocessing
    x = prep.normalize(to_float(images, runtime.device))
    all_targets = run_targets(run)

    def scores(batch: torch.Tensor) -> torch.Tensor:
        with runtime.precision.autocast():
            return target_scores(model(batch).float(), all_targets)

    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad(), runtime.precision.autocast():
            logits = model(x).float()
    finally:
        hook.remove()
    activation = seen[0] if seen else None
    if not isinstance(activation, torch.Tensor) or activation.dim() != 4:
        shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
        raise FacetlError(f"layer {layer_name} gives {shape}, not a (batch, channels, height, width) feature map; "
                          "Grad-CAM needs a convolutional stage")
    probs = probabilities(logits, run.record.temperature, run.record.multi_attribute).cpu().numpy()
    # by default each image's decision; multi-attribute, its most probable attribute
    predicted = probs.argmax(1) if run.record.multi_attribute else Decision.of(run.record).decide(probs)
    chosen = [int(k) for k in (predicted if targets is None else targets)]

    from captum.attr import LayerAttribution, LayerGradCam

    # one forward and one backward: the gradient of each image's target score w.r.t. the layer's output
    raw = LayerGradCam(scores, module).attribute(x, target=chosen, relu_attributions=True)
    maps = LayerAttribution.interpolate(raw.float(), (images.shape[1], images.shape[2]), interpolate_mode="bilinear")
    return GradCams(probs, maps[:, 0].clamp_min(0).detach().cpu().numpy(), raw[:, 0].detach().float().cpu().numpy(),
                    chosen, activation.float().cpu().numpy() if keep_activations else None)


# --- preparing files as the run prepares them ---------------------------------------------------------

def prepare_files(run: LoadedRun, files: Sequence[Path]) -> tuple[list[Path], list[np.ndarray], list[tuple[str, str]]]:
    """(files read, their prepared uint8 images, (file, why) for each skipped one). A `--faces detect` run
    gets the largest face of each photo, aligned as training aligned it."""
    prep = run.record.preprocessing
    kept, arrays, skipped = [], [], []
    if prep.faces is None:
        recut = recut_crop(prep.recut, prep.size)
        for f in files:
            try:
                arrays.append(decode_image(f, prep.size, prep.colour, recut)[0])
                kept.append(Path(f))
            except UnreadableImage as exc:
                skipped.append((str(f), str(exc)))
        return kept, arrays, skipped
    from facetl.data.faces import faces_in_photos

    for result in faces_in_photos(files, prep.faces, prep.size, multi_face="largest"):
        if result.error or not result.used:
            skipped.append((result.source, result.error or result.note))
            continue
        kept.append(Path(result.source))
        arrays.append(prep.colour_crop(result.used[0].crop))
    return kept, arrays, skipped


# the bytes of a stem in an output name: '.features.png' and a '-N' must still fit a file name (NAME_MAX 255)
STEM_BYTES = 200


def output_stems(files: Sequence[Path]) -> list[str]:
    """Each file's stem; files that share one get their folder's name in front (`positives7_12`), then a number.
    A stem too long for a file name once the suffixes are added is cut, with a hash of the whole to keep it apart."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    stems, used = [], set()
    for f in files:
        stem = short_stem(f.stem if counts[f.stem] == 1 else f"{f.parent.name}_{f.stem}")
        unique, n = stem, 2
        while unique in used:
            unique, n = f"{stem}-{n}", n + 1
        used.add(unique)
        stems.append(unique)
    return stems


def short_stem(stem: str, limit: int = STEM_BYTES) -> str:
    """`stem` when it fits `limit` bytes (names are bytes on disk), else its start and 8 hex digits of its hash."""
    if len(stem.encode()) <= limit:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    head = stem.encode()[:limit - 9].decode(errors="ignore")  # never half a character
    return f"{head}-{digest}"


# --- facetl explain --------------------------------------------------------------------------------------

@dataclass
class Explained:
    written: list[Path]
    skipped: list[tuple[str, str]]
    layer: str
    explained: int = 0           # images with both pictures written


@dataclass(frozen=True)
class ExplainOptions:
    """What `facetl explain` draws, and whether it may replace pictures already there."""
    class_name: str | None = None  # --class: explained besides the predicted class
    layer: str | None = None       # --layer; None: default_layer
    overwrite: bool = False        # --overwrite


def explain(run: LoadedRun, files: Sequence[Path], out: Path, runtime: Runtime,
            options: ExplainOptions = ExplainOptions(), progress: bool = False,
            log: Callable[[str], None] = print) -> Explained:
    """For each file: OUT/<stem>.gradcam.png (the image, Grad-CAM of the predicted class and of the option's
    class) and OUT/<stem>.features.png (the top channels of its layer). Every refusal comes before any work; an
    image whose pictures cannot be written is skipped with a warning, and the others are kept."""
    out, files = Path(out), list(dict.fromkeys(Path(f) for f in files))
    extra = target_index(run, options.class_name) if options.class_name is not None else None
    layer_name, _ = resolve_layer(run, options.layer)
    pairs = [(out / f"{s}.gradcam.png", out / f"{s}.features.png") for s in output_stems(files)]
    _prepare_out(out, run, pairs, options.overwrite)

    kept, arrays, skipped = prepare_files(run, files)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    where = dict(zip(files, pairs))
    names = [t.name for t in run_targets(run)]
    said = "most probable" if run.record.multi_attribute else "predicted"
    one_line_each = not (progress and len(kept) > ONE_LINE_EACH)
    bar = progress_bar(total=len(kept), desc="explaining", unit="img", enabled=not one_line_each)
    result = Explained([], skipped, layer_name)
    for start in range(0, len(kept), BATCH):
        batch_files, batch = kept[start:start + BATCH], np.stack(arrays[start:start + BATCH])
        predicted = grad_cam(run, batch, runtime, layer_name, keep_activations=True)
        asked = grad_cam(run, batch, runtime, layer_name, [extra] * len(batch)) if extra is not None else None
        for i, f in enumerate(batch_files):
            cam_png, features_png = where[f]
            panels = [_Panel(f"{said} {names[predicted.targets[i]]}", predicted.maps[i],
                             predicted.probs[i, predicted.targets[i]])]
            if asked is not None:
                panels.append(_Panel(f"--class {names[extra]}", asked.maps[i], asked.probs[i, extra]))
            title = f"{short_name(str(f), 48)}: Grad-CAM at {layer_name} ({predicted.raw.shape[1]}x{predicted.raw.shape[2]})"
            try:
                plot_gradcam(batch[i], panels, cam_png, title)
                result.written.append(cam_png)
                plot_feature_maps(batch[i], predicted.activations[i], features_png,
                                  f"{short_name(str(f), 48)}: {layer_name}")
                result.written.append(features_png)
            except OSError as exc:  # this image's pictures only: what is written stays, the rest go on
                why = f"cannot write its pictures in {out}: {exc.strerror or exc}"
                skipped.append((str(f), why))
                print(f"warning: skipped {f}: {why}", file=sys.stderr)
            else:
                result.explained += 1
                if one_line_each:
                    log(f"wrote {cam_png} and {features_png.name} ({said} {names[predicted.targets[i]]} "
                        f"{predicted.probs[i, predicted.targets[i]]:.2f})")
            bar.update(1)
    bar.close()
    return result


def _prepare_out(out: Path, run: LoadedRun, pairs: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Refuse the run folder, a file, existing pictures (without --overwrite) and a folder that cannot be made."""
    if out.exists() and out.resolve() == run.folder.resolve():
        raise FacetlError(f"--out {out} is the run folder; write explanations elsewhere (e.g. {out / 'explain'})")
    if out.exists() and not out.is_dir():
        raise FacetlError(f"--out {out} is a file, not a folder; choose a folder for the pictures")
    existing = [p for pair in pairs for p in pair if p.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FacetlError(f"{existing[0]}{more} exist; pass --overwrite to replace them or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacetlError(f"--out {out}: cannot make the folder: {exc.strerror or exc}") from None


# --- the pictures -----------------------------------------------------------------------------------------

@dataclass
class _Panel:
    label: str
    cam: np.ndarray              # (H, W) >= 0
    probability: float


def _save(fig: Figure, path: Path, tight: bool = True) -> Figure:
    buffer = io.BytesIO()
    # a tight bounding box draws the figure twice: the many-panel grid lays itself out instead
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return fig


def overlay(ax, image: np.ndarray, cam: np.ndarray, top: float) -> None:
    """The image, with the map coloured on top: opacity grows with the value, so cold places show the photo."""
    ax.imshow(image)
    level = np.clip(cam / top, 0, 1) if top > 0 else np.zeros_like(cam)
    colours = plt.get_cmap(COLORMAP)(level)
    colours[..., 3] = OVERLAY_ALPHA * level
    ax.imshow(colours)
    ax.axis("off")


def plot_gradcam(image: np.ndarray, panels: list[_Panel], path: Path, title: str) -> Figure:
    """The image as the model sees it, then one overlay per panel, on one colour scale for all of them
    (the brightest spot of any panel), so a class with little evidence looks faint, not equally hot."""
    top = max(float(p.cam.max()) for p in panels)
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)) + 0.6, 3.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title(f"as the model sees it ({image.shape[1]}x{image.shape[0]})", fontsize=9)
    axes[0].axis("off")
    for ax, panel in zip(axes[1:], panels):
        overlay(ax, image, panel.cam, top)
        empty = "\nno positive evidence at this layer" if panel.cam.max() <= 0 else ""
        ax.set_title(f"{clip(panel.label, 30)}  p={panel.probability:.2f}{empty}", fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap=COLORMAP, norm=matplotlib.colors.Normalize(0, 1))
    fig.colorbar(mappable, ax=list(axes), fraction=0.025, pad=0.02, label="Grad-CAM, relative")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_feature_maps(image: np.ndarray, activation: np.ndarray, path: Path, title: str,
                      count: int = TOP_CHANNELS) -> Figure:
    """The image and the `count` channels of one layer with the highest mean activation, each on its own scale."""
    means = activation.mean(axis=(1, 2))
    top = np.argsort(-means, kind="stable")[:count]
    columns = 6
    rows = -(-(len(top) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.7, rows * 1.9 + 0.4), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / (rows * 1.9 + 0.4), wspace=0.08,
                        hspace=0.3)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("input", fontsize=8)
    for ax, c in zip(axes.flat[1:], top):
        ax.imshow(activation[c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}  mean {means[c]:.3g}", fontsize=7)
    c, h, w = activation.shape
    fig.suptitle(f"{title} ({c} channels, {h}x{w}): top {len(top)} channels by mean activation", fontsize=10)
    return _save(fig, path, tight=False)


# --- the evaluation's gallery -------------------------------------------------------------------------------

def gradcam_gallery(run: LoadedRun, split: SplitResult, out_png: Path, runtime: Runtime | None = None,
                    count: int = 6, layer: str | None = None) -> Figure:
    """One PNG: Grad-CAM (predicted class) of the `count` most confident right and `count` most confident
    wrong images of `split`. Only those images are read from `split.images` (it may be a lazy view of a large
    store), and they take one forward and one backward pass together."""
    runtime = runtime or Runtime.for_inference("cpu")
    images, labels, probs, names = split.images, split.labels, split.probs, split.names
    predicted = Decision.of(run.record).decide(probs)
    confidence = probs[np.arange(len(probs)), predicted]
    rows = []
    for label, mask in (("most confident right", predicted == labels), ("most confident wrong", predicted != labels)):
        which = np.flatnonzero(mask)
        rows.append((label, which[np.argsort(-confidence[which], kind="stable")][:count]))
    shown = np.concatenate([which for _, which in rows]).astype(int)
    layer_name, _ = resolve_layer(run, layer)
    cams = grad_cam(run, np.stack([images[i] for i in shown]), runtime, layer_name) if len(shown) else None
    class_names = run.class_names
    fig, axes = plt.subplots(2, count, figsize=(count * 1.9, 2 * 2.45), squeeze=False)
    k = 0
    for row, (label, which) in enumerate(rows):
        for ax in axes[row]:
            ax.axis("off")
        axes[row, 0].text(-0.12, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=9, color="tab:green" if row == 0 else "tab:red")
        if len(which) == 0:
            axes[row, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=9)
        for ax, i in zip(axes[row], which):
            cam = cams.maps[k]
            overlay(ax, images[i], cam, float(cam.max()))
            ax.set_title((f"{short_name(names[i])}\n" if names is not None else "")
                         + f"true {clip(class_names[labels[i]], 19)}\n"
                         f"pred {clip(class_names[predicted[i]], 14)} {confidence[i]:.2f}", fontsize=7,
                         color="black" if row == 0 else "tab:red")
            k += 1
    side = "" if cams is None else f" ({cams.raw.shape[1]}x{cams.raw.shape[2]})"
    fig.suptitle(f"Grad-CAM of the predicted class at {layer_name}{side}: the most confident of {len(labels)} images",
                 fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out_png)


class TrainingPictures(Callback):
    """fit's callback that draws the Grad-CAM gallery of a run that just finished training (gradcam.png, beside its
    errors.png), before its report is written."""

    name = "the Grad-CAM gallery"

    def on_fit_start(self, run: RunInfo) -> None:
        self.run = run

    def on_final_split(self, final: FinalSplit) -> None:
        if self.run.record.multi_attribute:  # the gallery shows one decision per image
            return
        run, split = self.run, final.split
        loaded = LoadedRun(run.folder, run.config, run.record, final.model, final.history)
        write_gradcam_gallery(loaded, split, run.folder / "gradcam.png", run.runtime)


def write_gradcam_gallery(run, split: SplitResult, path: Path, runtime: Runtime) -> None:
    """gradcam.png beside errors.png, before report.md is written (the report mentions it when it exists).
    A picture is not worth a failed evaluation: anything going wrong is one warning, and no stale file stays."""
    path.unlink(missing_ok=True)
    try:
        gradcam_gallery(run, split, path, runtime)
    except Exception as exc:  # noqa: BLE001 - any failure of an extra picture
        path.unlink(missing_ok=True)
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        warnings.warn(f"{path} not written: the Grad-CAM gallery failed ({why}); the rest goes on without it")

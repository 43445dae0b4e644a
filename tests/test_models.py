"""Backbones x strategies: shapes, what trains, frozen batch norm, the prefix/suffix cut, weight loading."""
from __future__ import annotations

import copy
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

import facetl.models.classifier as classifier
from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.models import TrainablePart, build_model
from facetl.models.factory import create_backbone, list_backbones
from facetl.models.strategies import backbone_layers
from facetl.models.weights import WeightsUnavailable
from facetl.preprocessing import Preprocessing
from facetl.record import RunRecord, RuntimeUsed, StartingWeights

BACKBONES = ["vgg16", "vgg19", "mobilenet_v2", "resnet18", "mini_xception", "dlib_resnet"]  # resnet18: a timm model
# the smallest input a backbone takes, where 32 pixels are too few (dlib_resnet's strided convolutions have
# no padding)
IMG_SIZE = {"dlib_resnet": 104}
STRATEGIES = ["frozen", "last-block", "from:K", "full"]
LAST_BLOCK = {  # parameter-name prefixes that last-block trains, besides the head
    "vgg16": [f"backbone.features.{i}." for i in range(24, 31)],
    "vgg19": [f"backbone.features.{i}." for i in range(28, 37)],
    "mobilenet_v2": [f"backbone.features.{i}." for i in range(14, 19)],
    "resnet18": ["backbone.features.0.model.layer4."],
    "mini_xception": ["backbone.features.5."],  # the last residual unit
    "dlib_resnet": ["backbone.features.14.", "backbone.features.15."],  # alevel0 and the 128-d embedding
}
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"

pytestmark = pytest.mark.usefixtures("torch_one_thread")

_built: dict[str, nn.Module] = {}


@pytest.fixture
def fast_backbones(monkeypatch):
    """Randomly initialised backbones built once and deep-copied: building VGG is slow on a CPU."""
    real = classifier.create_backbone

    def cached(name, weights):
        if weights != "none":
            return real(name, weights)
        if name not in _built:
            _built[name] = real(name, "none")
        return copy.deepcopy(_built[name])

    monkeypatch.setattr(classifier, "create_backbone", cached)


def make(backbone="mobilenet_v2", strategy="frozen", classes=2, img_size=32, **changes):
    if strategy == "from:K":
        layers = backbone_layers(classifier.create_backbone(backbone, "none"))
        strategy = f"from:{len(layers) // 2}"
    config = TrainConfig(data="x", backbone=backbone, weights="none", strategy=strategy, img_size=img_size,
                         **changes)
    built = build_model(config, classes, log=lambda message: None)
    assert built.preprocessing.size == img_size
    return built.model, built.plan


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def expected_trainable(model, backbone, strategy, plan) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith("head.")}
    if strategy == "frozen":
        return head
    if strategy == "full":
        return names
    if strategy == "last-block":
        return head | {n for n in names if n.startswith(tuple(LAST_BLOCK[backbone]))}
    later = backbone_layers(model.backbone)[plan.first_trainable:]
    return head | {f"backbone.{layer}.{p}" for layer, module in later for p, _ in module.named_parameters()}


def tiny_batch(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- every backbone x strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_strategy_trains_the_right_part(fast_backbones, backbone, strategy):
    size = IMG_SIZE.get(backbone, 32)
    model, plan = make(backbone, strategy, img_size=size)
    trainable = trainable_names(model)
    assert trainable == expected_trainable(model, backbone, strategy, plan)
    assert plan.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # the total counts every weight, also the frozen batch-norm ones that became buffers
    assert plan.total_params == sum(p.numel() for p in model.parameters()) + sum(
        m.weight.numel() + m.bias.numel() for m in model.modules() if "Frozen" in type(m).__name__)
    if strategy == "frozen":
        assert plan.trainable_params == sum(p.numel() for p in model.head.parameters())
        assert plan.cut == len(model.backbone.features)
    if strategy == "full":
        assert plan.trainable_params == plan.total_params and plan.cut == 0
    if strategy in ("last-block", "from:K"):
        assert 0 < plan.trainable_params < plan.total_params
    x = tiny_batch(size=size)

    # eval mode: the frozen prefix then the trainable suffix is the whole forward, at any cut
    model.eval()
    with torch.no_grad():
        whole = model(x)
        for cut in {plan.cut, 0, len(model.backbone.features)}:
            torch.testing.assert_close(model.forward_suffix(model.forward_prefix(x, cut), cut), whole)

    # train mode: one logit for two classes, and gradients reach exactly the trainable parameters
    model.train()
    logits = model(x)
    assert logits.shape == (2, 1)
    nn.functional.binary_cross_entropy_with_logits(logits[:, 0], torch.tensor([0.0, 1.0])).backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, f"{name} trains but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"


def test_vgg16_last_block_is_features_24_on(fast_backbones):
    model, plan = make("vgg16", "last-block")
    assert plan.cut == 24
    trained = {int(n.split(".")[2]) for n in trainable_names(model) if n.startswith("backbone.")}
    assert trained == {24, 26, 28}  # the three convolutions of the last block
    expected = sum(p.numel() for p in model.backbone.features[24:].parameters())
    assert plan.trainable_params == expected + sum(p.numel() for p in model.head.parameters())
    assert plan.trainable_params == 3 * (512 * 512 * 9 + 512) + 513


@pytest.mark.parametrize("backbone, last_stage, before", [
    ("convnext_atto", "stages.3.", "stages.2."),      # timm files its head.norm in a group of its own
    ("mobilenetv3_small_050", "blocks.5.", "blocks.4."),
])
def test_timm_last_block_and_frozen_with_non_leaf_parameters(fast_backbones, backbone, last_stage, before):
    model, plan = make(backbone, "last-block")
    prefix = "backbone.features.0.model."
    names = {n for n, _ in model.backbone.named_parameters(prefix="backbone")}
    trained = trainable_names(model) & names
    stage = {n for n in names if n.startswith(prefix + last_stage)}
    assert stage and stage <= trained
    assert not any(n.startswith(prefix + before) for n in trained)
    model.train()
    model(tiny_batch()).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in stage)
    frozen, plan = make(backbone, "frozen")  # layer scales and BatchNormAct2d are not leaf modules
    assert trainable_names(frozen) == {n for n, _ in frozen.named_parameters() if n.startswith("head.")}


def test_from_index_and_from_name(fast_backbones):
    vgg, plan = make("vgg16", "from:10")
    assert plan.cut == 10
    assert {int(n.split(".")[2]) for n in trainable_names(vgg) if n.startswith("backbone.")} == \
        {10, 12, 14, 17, 19, 21, 24, 26, 28}
    by_name, named_plan = make("mobilenet_v2", "from:features.14")
    last_block, block_plan = make("mobilenet_v2", "last-block")
    assert trainable_names(by_name) == trainable_names(last_block)
    assert named_plan.cut == block_plan.cut == 14


@pytest.mark.parametrize("classes, head", [(2, "linear"), (5, "linear"), (24, "linear"), (2, "mlp"), (3, "mlp")])
def test_one_logit_for_two_classes_n_for_n(fast_backbones, classes, head):
    model, _ = make("mobilenet_v2", "frozen", classes, head=head)
    model.eval()
    with torch.no_grad():
        assert model(tiny_batch()).shape == (2, 1 if classes == 2 else classes)
    assert model.outputs == (1 if classes == 2 else classes)


# ---------------------------------------------------------------- frozen batch norm


def batch_norms_of(module):
    """Every batch-norm layer, trainable or frozen (frozen ones are replaced by buffer-only equivalents)."""
    return [(n, m) for n, m in module.named_modules() if hasattr(m, "running_mean") and hasattr(m, "running_var")]


def batch_norms(model):
    return batch_norms_of(model.backbone)


TRAINED_BN = {  # batch-norm names (in the backbone) that last-block trains
    "mobilenet_v2": ("features.14.", "features.15.", "features.16.", "features.17.", "features.18."),
    "resnet18": ("features.0.model.layer4.",),
    "mobilenetv3_small_050": ("features.0.model.blocks.5.",),  # timm's BatchNormAct2d: not a leaf module
    "mini_xception": ("features.5.",),
}


@pytest.mark.parametrize("backbone, strategy", [
    ("mobilenet_v2", "frozen"), ("mobilenet_v2", "last-block"), ("mobilenet_v2", "full"),
    ("resnet18", "frozen"), ("resnet18", "last-block"),
    ("mobilenetv3_small_050", "frozen"), ("mobilenetv3_small_050", "last-block"),
    ("mini_xception", "frozen"), ("mini_xception", "last-block"),
])
def test_frozen_batch_norm_cannot_be_unfrozen_by_train(fast_backbones, backbone, strategy):
    model, plan = make(backbone, strategy)
    norms = batch_norms(model)
    trained = {"frozen": (), "full": ("",), "last-block": TRAINED_BN[backbone]}[strategy]
    frozen = {n for n, _ in norms if not n.startswith(trained)}
    assert 0 < len(frozen) < len(norms) if strategy == "last-block" else True
    assert plan.trainable_batchnorm == (len(frozen) < len(norms))
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms}
    # .train() on every module there is, the trainable part (what the optimiser and DDP see) included
    model.train()
    TrainablePart(model, plan.cut).train()
    for module in model.modules():
        module.train()
    with torch.no_grad():
        model(tiny_batch(4) * 3 + 1)
    for name, module in norms:
        unchanged = torch.equal(module.running_mean, before[name][0]) and \
            torch.equal(module.running_var, before[name][1])
        assert unchanged == (name in frozen), f"{name}: frozen={name in frozen}, running stats unchanged={unchanged}"
        assert isinstance(module.weight, nn.Parameter) == (name not in frozen), name
        assert (name in frozen) == ("Frozen" in type(module).__name__), name


def test_a_frozen_epoch_leaves_every_frozen_tensor_bit_identical(fast_backbones):
    # one optimiser epoch in train mode on last-block: everything in features[:cut] is exactly as before
    model, plan = make("mobilenet_v2", "last-block")
    frozen_before = {k: v.clone() for k, v in model.backbone.features[:plan.cut].state_dict().items()}
    frozen_bn_in_block = {k: v.clone() for k, v in model.backbone.features[plan.cut:].state_dict().items()
                          if "running" in k}
    part = TrainablePart(model, plan.cut)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    part.train()
    for step in range(3):
        z = model.forward_prefix(tiny_batch(4) * (step + 1), plan.cut)
        loss = nn.functional.binary_cross_entropy_with_logits(part(z)[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.backbone.features[:plan.cut].state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    # the trainable block's own statistics did move: the test would notice a no-op
    after = model.backbone.features[plan.cut:].state_dict()
    assert any(not torch.equal(after[k], v) for k, v in frozen_bn_in_block.items())


@pytest.mark.parametrize("head, img_size", [("mlp", 64), ("vgg", 32)])
def test_building_a_flattening_head_leaves_batch_norm_alone(fast_backbones, head, img_size):
    # the head measures the flattened feature size with a probe image; that must not touch BN statistics
    backbone = classifier.create_backbone("mobilenet_v2", "none")
    before = [(m.running_mean.clone(), m.running_var.clone()) for _, m in batch_norms_of(backbone)]
    model, _ = make("mobilenet_v2", "frozen", 3, img_size=img_size, head=head)
    for (name, m), (mean, var) in zip(batch_norms(model), before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var), name


# ---------------------------------------------------------------- bad names


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(FacetlError) as info:
        create_backbone("resnet9000", "none")
    for name in ("vgg16", "vgg19", "mobilenet_v2"):
        assert name in str(info.value)
    assert set(BACKBONES[:3]) <= set(list_backbones())


@pytest.mark.parametrize("strategy, reason", [
    ("from:9999", "layers 0 to"), ("from:-1", "layers 0 to"), ("from:features.99", "no module"),
    ("from:classifier", "no module"), ("from:", "no module"), ("half", "strategy: .half. is not one of"),
])
def test_bad_strategy_is_refused(fast_backbones, strategy, reason):
    with pytest.raises(FacetlError, match=reason):
        make("mobilenet_v2", strategy)


def test_unknown_head_is_refused(fast_backbones):
    with pytest.raises(FacetlError, match="head: .huge. is not one of"):
        make("mobilenet_v2", head="huge")


# ---------------------------------------------------------------- weights from a file


def assert_same_backbone(a, b):
    # a frozen batch-norm layer keeps no num_batches_tracked: a counter, not a weight
    sa, sb = ({k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")} for m in (a, b))
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def differs(a, b) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
               if x.is_floating_point())


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18", "mini_xception", "dlib_resnet"])
def test_state_dict_file_loads(tmp_path, backbone):
    source = create_backbone(backbone, "none")
    if backbone == "resnet18":  # a timm file uses the model's bare names
        state = source.features[0].model.state_dict()
        assert "conv1.weight" in state
    else:  # a torchvision file: features.* (its classifier.* is ignored)
        state = {**source.state_dict(), "classifier.1.weight": torch.zeros(1000, 1280)}
    torch.save(state, tmp_path / "w.pth")
    loaded = create_backbone(backbone, str(tmp_path / "w.pth"))
    assert differs(loaded, create_backbone(backbone, "none"))  # the test would notice a random init
    assert_same_backbone(loaded, source)


def test_facetl_checkpoint_and_run_folder_load_backbone_and_head(tmp_path, fast_backbones):
    trained, _ = make("mobilenet_v2", "last-block")
    with torch.no_grad():  # as if trained: weights and batch-norm statistics unlike any fresh model's
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for _, bn in batch_norms(trained):
            bn.running_mean.normal_()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": trained.state_dict(), "epoch": 3, "record": fake_record(32).to_dict()}, run / "best.pt")
    assert next(iter(trained.state_dict())).startswith("backbone.features.")
    for weights in (str(run / "best.pt"), str(run)):
        config = TrainConfig(data="x", backbone="mobilenet_v2", weights=weights, img_size=32)
        built = build_model(config, 2, log=lambda m: None)
        model = built.model
        assert_same_backbone(model.backbone, trained.backbone)
        assert torch.equal(model.head[-1].weight, trained.head[-1].weight)
        assert built.weights.describe() == f"weights from facetl run {weights}" and built.weights.pretrained
    # another task (five classes): the backbone still loads, the head starts afresh
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights=str(run), img_size=32)
    model = build_model(config, 5, log=lambda m: None).model
    assert_same_backbone(model.backbone, trained.backbone)
    assert model.head[-1].weight.shape == (5, 1280)


def fake_record(size: int, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), colour="rgb") -> RunRecord:
    return RunRecord("t", StartingWeights("none"), Preprocessing(size, mean, std, colour), ["a", "b"], 0, 1, 1, "",
                     RuntimeUsed("cpu", "fp32", "fp32"), "2026-01-01T00:00:00")


def test_weights_from_a_run_bring_its_preprocessing(tmp_path, fast_backbones):
    # a 64 px grey run given as --weights: the new run is 64 px grey with its normalisation, not 224 px ImageNet
    trained, _ = make("mobilenet_v2", "full", img_size=64)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": trained.state_dict(), "record": fake_record(64, colour="grey").to_dict()}, run / "best.pt")
    logged = []
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights=str(run), strategy="frozen")
    built = build_model(config, 2, log=logged.append)
    assert built.preprocessing == Preprocessing(64, (0.5,) * 3, (0.25,) * 3, "grey")
    assert not any("warning" in line for line in logged)
    # flags still override, with a warning naming what they change
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights=str(run), img_size=96, normalize=[0.4, 0.2])
    built = build_model(config, 2, log=logged.append)
    assert (built.preprocessing.size, built.preprocessing.mean, built.preprocessing.colour) == (96, (0.4,) * 3, "grey")
    assert any("warning" in line and "mean, size, std" in line for line in logged)
    # a plain state-dict file has no preprocessing of its own: the backbone's ImageNet defaults
    torch.save(trained.backbone.state_dict(), tmp_path / "plain.pth")
    built = build_model(TrainConfig(data="x", backbone="mobilenet_v2", weights=str(tmp_path / "plain.pth")), 2,
                        log=logged.append)
    assert built.preprocessing.size == 224 and built.weights.kind == "file"


def test_dlib_weights_belong_to_dlib_resnet_which_has_no_imagenet_weights():
    with pytest.raises(FacetlError, match="backbone dlib_resnet's .*use --backbone dlib_resnet --weights dlib"):
        create_backbone("mobilenet_v2", "dlib")
    with pytest.raises(WeightsUnavailable, match="dlib_resnet has no ImageNet weights; .* --weights dlib"):
        create_backbone("dlib_resnet", "imagenet")
    config = TrainConfig(data="x", backbone="dlib_resnet", weights="none", faces="detect")
    built = build_model(config, 2, log=lambda message: None)
    assert built.preprocessing.size == 150 and built.preprocessing.faces.template == "dlib"
    assert built.model.backbone.flat_dim(150) == 128  # a linear head sees the 128-d face descriptor
    assert classifier.resolve_preprocessing(config, log=lambda message: None) == built.preprocessing


def test_wrong_shape_file_is_refused(tmp_path):
    state = create_backbone("mobilenet_v2", "none").state_dict()
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(FacetlError, match=r"features\.0\.0\.weight has shape \(8, 3, 3, 3\)"):
        create_backbone("mobilenet_v2", str(tmp_path / "w.pth"))


def test_file_of_another_backbone_is_refused(tmp_path):
    torch.save(create_backbone("resnet18", "none").features[0].model.state_dict(), tmp_path / "r.pth")
    with pytest.raises(FacetlError, match="no parameter names match"):
        create_backbone("mobilenet_v2", str(tmp_path / "r.pth"))


def test_file_missing_tensors_is_refused(tmp_path):
    state = create_backbone("mobilenet_v2", "none").state_dict()
    del state["features.18.1.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(FacetlError, match="lacks 1 of"):
        create_backbone("mobilenet_v2", str(tmp_path / "w.pth"))


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_missing_weights_file(tmp_path, content):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FacetlError, match="w.pth"):
        create_backbone("mobilenet_v2", str(path))



def test_a_runs_head_is_carried_over_only_to_a_run_with_the_same_classes(tmp_path, fast_backbones):
    # a gender run ('a', 'b') has one logit, as a smile run does: its head must not become the smile head
    trained, _ = make("mobilenet_v2", "full")
    with torch.no_grad():
        for parameter in trained.head.parameters():
            parameter.fill_(0.5)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": trained.state_dict(), "record": fake_record(32).to_dict()}, run / "best.pt")
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights=str(run), strategy="frozen")
    logged = []
    same = build_model(config, 2, log=logged.append, class_names=["a", "b"]).model
    assert all((v == 0.5).all() for v in same.head.state_dict().values()) and any("carried over" in m for m in logged)
    other = build_model(config, 2, log=logged.append, class_names=["negatives", "positives"]).model
    assert not all((v == 0.5).all() for v in other.head.state_dict().values())
    assert f"head: new (the weights' run {run} classified a, b; this run: negatives, positives)" in logged
    assert torch.equal(other.backbone.features[0][0].weight, trained.backbone.features[0][0].weight)


# ---------------------------------------------------------------- ImageNet weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, and no downloads: the network is (made) unavailable."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def test_imagenet_weights_come_from_the_torch_hub_cache(torch_home):
    reference = torchvision.models.mobilenet_v2(weights=None)
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / MOBILENET_FILE)
    backbone = create_backbone("mobilenet_v2", "imagenet")
    assert_same_backbone(backbone.features, reference.features)


def test_missing_imagenet_weights_name_the_file_and_folder(torch_home):
    with pytest.raises(WeightsUnavailable) as info:
        create_backbone("mobilenet_v2", "imagenet")
    message = str(info.value)
    assert MOBILENET_FILE in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "--weights none" in message


def test_auto_weights_fall_back_to_random_init(torch_home):
    logged = []
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights="auto", img_size=32)
    built = build_model(config, 2, log=logged.append)
    assert built.weights.describe() == "no pretraining" and not built.weights.pretrained
    assert any("no ImageNet weights" in line for line in logged)


def test_auto_weights_use_the_cache_when_there(torch_home):
    reference = torchvision.models.mobilenet_v2(weights=None)
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), torch_home / "hub" / "checkpoints" / MOBILENET_FILE)
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights="auto", img_size=32)
    built = build_model(config, 2, log=lambda m: None)
    assert built.weights.describe() == "ImageNet pretrained" and built.weights.pretrained
    assert_same_backbone(built.model.backbone.features, reference.features)

"""Model zoo contract: every entry of MODELS is checked, so new models are tested for free."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from kdlight.explain.attribution import AttributionConfig, attribute
from kdlight.models import MLP, MODELS, CifarResNet, CNN1d, CNN2d, ResNet8x4, WideResNet

#: one sample's shape each model family takes (a new family adds its entry here)
NATURAL_INPUTS: dict[type[nn.Module], tuple[int, ...]] = {
    MLP: (30,),
    CNN2d: (1, 8, 8),
    CNN1d: (1, 40),
    CifarResNet: (3, 32, 32),
    WideResNet: (3, 32, 32),
}
NUM_CLASSES = 7
BATCH = 2


def natural_input(cls: type[nn.Module]) -> tuple[int, ...]:
    family = next((base for base in cls.__mro__ if base in NATURAL_INPUTS), None)
    assert family is not None, f"add {cls.__name__}'s input shape to NATURAL_INPUTS"
    return NATURAL_INPUTS[family]


def build(cls: type[nn.Module], num_classes: int = NUM_CLASSES) -> tuple[nn.Module, torch.Tensor]:
    """Instantiate ``cls`` for its natural input and return (model, input batch)."""
    shape = natural_input(cls)
    params = inspect.signature(cls).parameters
    kwargs: dict = {"num_classes": num_classes}
    if "in_features" in params:
        kwargs["in_features"] = math.prod(shape)
    if "in_channels" in params:
        kwargs["in_channels"] = shape[0]
    torch.manual_seed(0)
    return cls(**kwargs), torch.randn(BATCH, *shape)


#: models of float inputs; the text models (token ids, a required vocab_size) have their own contract
FLOAT_MODELS = sorted(name for name, cls in MODELS.items() if not hasattr(cls, "get_input_embeddings"))
#: text classifiers: token models with ``num_classes``; token models without it are causal LMs
#: (logits [N, T, V]), whose contract is tests/models/test_causal_lm.py's
TEXT_MODELS = sorted(
    name for name in set(MODELS) - set(FLOAT_MODELS) if "num_classes" in inspect.signature(MODELS[name]).parameters
)
names = pytest.mark.parametrize("name", FLOAT_MODELS)


@names
def test_constructor_is_yaml_friendly(name: str) -> None:
    params = inspect.signature(MODELS[name]).parameters
    assert "num_classes" in params
    for p in params.values():
        assert p.default is not inspect.Parameter.empty, f"{name}.{p.name} has no default"
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


@names
def test_forward_backward_contract(name: str) -> None:
    """One forward/backward per model checks shapes, named layers, module reuse and gradients."""
    model, x = build(MODELS[name])
    model.train()
    assert model.gradcam_layer is None or isinstance(model.gradcam_layer, str)
    wanted = ["embedding"]
    if model.gradcam_layer is not None:
        wanted.append(model.gradcam_layer)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in wanted
    ]
    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles += [m.register_forward_hook(lambda *_a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in leaves]
    out = model(x)
    for h in handles:
        h.remove()

    # output and named layers
    assert out.shape == (BATCH, NUM_CLASSES)
    assert set(seen) == set(wanted)
    emb = seen["embedding"]
    assert emb.dim() == 2 and emb.shape[0] == BATCH
    if hasattr(model, "embedding_dim"):
        assert emb.shape[1] == model.embedding_dim
    if model.gradcam_layer is not None:
        assert seen[model.gradcam_layer].dim() == x.dim()  # a map [B, C, ...] like the input

    # ReLUs are separate, non-inplace modules, each run once; no leaf reused or dead
    relus = [n for n, m in leaves if isinstance(m, nn.ReLU)]
    assert relus
    assert all(not m.inplace for _, m in leaves if isinstance(m, nn.ReLU))
    assert {n: calls.get(n, 0) for n in relus} == {n: 1 for n in relus}
    assert {n: calls.get(n, 0) for n, _ in leaves} == {n: 1 for n, _ in leaves}
    assert len({id(m) for _, m in leaves}) == len(leaves)

    # gradients reach every parameter
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


# Published parameter counts for 100 classes (CRD / RepDistiller, Tian et al. 2020).
PUBLISHED = {
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_40_2": 2.26e6,
    "wrn_16_2": 0.70e6,
    "resnet56": 0.86e6,
    "resnet20": 0.28e6,
    "resnet110": 1.73e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_literature(name: str) -> None:
    n = sum(p.numel() for p in MODELS[name](num_classes=100).parameters())
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.02, n


def test_mlp_flattens_and_dropout() -> None:
    model = MLP(in_features=64, num_classes=10, hidden=[32, 16], dropout=0.5)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert isinstance(model.layers[0][2], nn.Dropout)
    assert MLP(hidden=[])(torch.randn(2, 64)).shape == (2, 10)
    with pytest.raises(ValueError):
        model(torch.randn(3, 30))


def test_cnn_variants() -> None:
    assert CNN1d()(torch.randn(4, 40)).shape == (4, 10)  # [B, L] gets a channel dim
    m = CNN2d(in_channels=3, channels=[16, 32, 64], hidden=0)
    assert m.gradcam_layer == "conv3"
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert m.embedding_dim == 64


def test_captum_deeplift_runs() -> None:
    from captum.attr import DeepLift

    for model, x in (build(CNN2d), build(ResNet8x4)):
        model.eval()
        attr = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=0)
        assert attr.shape == x.shape and torch.isfinite(attr).all()


@names
def test_grad_cam_explains_the_declared_layer_by_default(name: str) -> None:
    """Without a configured layer, Grad-CAM uses the model's ``gradcam_layer``."""
    model, x = build(MODELS[name])
    if model.gradcam_layer is None:
        return
    target = torch.zeros(BATCH, dtype=torch.long)
    default = attribute(model, x, target, AttributionConfig("grad_cam"))
    declared = attribute(model, x, target, AttributionConfig("grad_cam", layer=model.gradcam_layer))
    assert default.shape == x.shape and torch.equal(default, declared)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_model_contract(name: str) -> None:
    """Token ids -> logits; padding after a sequence changes nothing; gradients reach the weights."""
    torch.manual_seed(0)
    model = MODELS[name](vocab_size=30, num_classes=NUM_CLASSES).eval()
    params = inspect.signature(MODELS[name]).parameters
    assert "num_classes" in params and "vocab_size" in params
    ids = torch.randint(1, 30, (BATCH, 6))
    out = model(ids)
    assert out.shape == (BATCH, NUM_CLASSES)
    padded = torch.cat([ids, torch.zeros(BATCH, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), out, atol=1e-5, rtol=1e-5)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    out.square().sum().backward()
    missing = [
        n for n, p in model.named_parameters() if "pooler" not in n and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, f"no gradient for {missing}"

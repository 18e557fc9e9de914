"""Token attributions: gradient methods at the embedding layer, token-replacing perturbations,
differentiable token maps; each against a closed form, a hand computation or Captum itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.core.modality import Image, Text
from kdlight.explain.attribution import AttributionConfig, attribute, input_gradient_map
from kdlight.explain.attribution.tokens import gradient_at_embeddings, token_map, token_method_names
from kdlight.models import FastText

VOCAB, PAD, UNK = 40, 0, 1


class TanhBag(nn.Module):
    """Mean of the real tokens' embeddings -> tanh -> linear: non-linear in the embeddings."""

    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.pad_token_id = PAD
        self.emb, self.head = nn.Embedding(VOCAB, dim, padding_idx=PAD), nn.Linear(dim, classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = (ids != PAD).unsqueeze(-1)
        return self.head(torch.tanh((self.emb(ids) * valid).sum(1) / valid.sum(1).clamp(min=1)))


def token_batch() -> torch.Tensor:
    """Four sequences of 7 ids from [2, VOCAB) with 7, 5, 2 and 1 real tokens (right padding)."""
    ids = torch.randint(2, VOCAB, (4, 7), generator=torch.Generator().manual_seed(0))
    for row, length in enumerate((7, 5, 2, 1)):
        ids[row, length:] = PAD
    return ids


def fasttext(seed: int = 0) -> FastText:
    torch.manual_seed(seed)
    return FastText(VOCAB, num_classes=3, embed_dim=8, pad_token_id=PAD)


def linear_contributions(model: FastText, ids: torch.Tensor, target: int, reference_id: int = PAD) -> torch.Tensor:
    """``(e_i - e_ref) . w_target / n_real`` per token: FastText without a hidden layer is linear in
    its embeddings, so IG, input x gradient (PAD reference: a zero embedding) and, with a non-PAD
    reference, every Shapley value equal this."""
    with torch.no_grad():
        weight = model.classifier.weight[target]
        real = (ids != PAD).float()
        diff = model.embeddings(ids) - model.embeddings.weight[reference_id]
        return (diff @ weight) * real / real.sum(1, keepdim=True)


def test_gradient_methods_match_the_closed_form_of_a_linear_model():
    model, ids = fasttext(), token_batch()
    text = Text(VOCAB, PAD)
    expected = linear_contributions(model, ids, target=2)
    for method in ("input_x_gradient", "integrated_gradients"):
        maps = attribute(model, ids, 2, AttributionConfig(method, n_steps=4), modality=text)
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    saliency = attribute(model, ids, 2, AttributionConfig("saliency"), modality=text)
    real = (ids != PAD).float()
    # saliency: the L2 norm of the gradient per token (its sum vanishes behind a LayerNorm)
    torch.testing.assert_close(saliency, model.classifier.weight[2].norm().detach() * real / real.sum(1, keepdim=True))
    # GradientSHAP without noise: the gradient is constant along every path, so it is IG again
    shap = attribute(model, ids, 2, AttributionConfig("gradient_shap", stdevs=0.0, n_samples=3), modality=text)
    torch.testing.assert_close(shap, expected, rtol=1e-5, atol=1e-6)
    # an UNK reference token: the difference is taken from its embedding; padding stays exactly 0
    unk = attribute(model, ids, 2, AttributionConfig("integrated_gradients", n_steps=4), modality=Text(VOCAB, PAD, UNK))
    torch.testing.assert_close(unk, linear_contributions(model, ids, 2, reference_id=UNK), rtol=1e-5, atol=1e-6)
    assert (unk[ids == PAD] == 0).all()


def test_integrated_gradients_completeness_on_a_nonlinear_model():
    torch.manual_seed(1)
    model, ids = TanhBag(), token_batch()
    text = Text(VOCAB, PAD, UNK)
    maps = attribute(model, ids, 1, AttributionConfig("integrated_gradients", n_steps=64), modality=text)
    with torch.no_grad():
        reference = text.replace(ids, text.valid(ids))  # every real token -> UNK, padding kept
        gap = model(ids)[:, 1] - model(reference)[:, 1]
    torch.testing.assert_close(maps.sum(1), gap, rtol=1e-4, atol=1e-5)
    assert (maps[ids == PAD] == 0).all() and (maps[ids != PAD] != 0).all()


def test_occlusion_replaces_each_real_token_by_the_reference_token():
    model, ids = fasttext(), token_batch()
    for text in (Text(VOCAB, PAD), Text(VOCAB, PAD, UNK)):
        maps = attribute(model, ids, 0, AttributionConfig("occlusion"), modality=text)
        expected = torch.zeros_like(maps)
        with torch.no_grad():
            for i, j in (ids != PAD).nonzero().tolist():
                removed = ids[i : i + 1].clone()
                removed[0, j] = text.reference_id
                expected[i, j] = model(ids[i : i + 1])[0, 0] - model(removed)[0, 0]
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)


def test_occlusion_patches_group_consecutive_real_tokens():
    model, ids = fasttext(), token_batch()
    text = Text(VOCAB, PAD, UNK)
    maps = attribute(model, ids[1:2], 0, AttributionConfig("occlusion", patch_size=2), modality=text)  # 5 real
    with torch.no_grad():
        full = model(ids[1:2])[0, 0]
        for group in ((0, 1), (2, 3), (4,)):
            removed = ids[1:2].clone()
            removed[0, list(group)] = UNK
            assert torch.allclose(maps[0, list(group)], full - model(removed)[0, 0], atol=1e-6)
    assert (maps[0, 5:] == 0).all()


@pytest.mark.parametrize("method", ["shapley_value_sampling", "kernel_shap"])
def test_shapley_methods_are_exact_on_an_additive_model(method):
    # with an UNK reference the count of real tokens never changes: the logit is additive in tokens
    model, ids = fasttext(), token_batch()
    maps = attribute(model, ids, 1, AttributionConfig(method, n_samples=24), modality=Text(VOCAB, PAD, UNK))
    torch.testing.assert_close(maps, linear_contributions(model, ids, 1, reference_id=UNK), rtol=1e-3, atol=1e-4)


def test_lime_scores_real_tokens_only():
    model, ids = fasttext(), token_batch()
    maps = attribute(model, ids, 1, AttributionConfig("lime", n_samples=32), modality=Text(VOCAB, PAD, UNK))
    assert maps.shape == ids.shape and (maps[ids == PAD] == 0).all() and torch.isfinite(maps).all()
    # LIME's ridge shrinks, but on an additive model it keeps the order of the exact contributions
    exact = linear_contributions(model, ids, 1, reference_id=UNK)
    assert torch.corrcoef(torch.stack([maps[0], exact[0]]))[0, 1] > 0.9


def test_methods_and_settings_that_cannot_explain_tokens_are_refused():
    model, ids = fasttext(), token_batch()
    text = Text(VOCAB, PAD)
    works = ", ".join(token_method_names())
    for method in ("deeplift_shap", "lrp", "grad_cam"):
        with pytest.raises(
            ValueError, match=f"^{method} cannot explain token ids; methods that work for text: {works}$"
        ):
            attribute(model, ids, 0, AttributionConfig(method), modality=text)
    assert {"saliency", "integrated_gradients", "occlusion", "kernel_shap"} <= set(token_method_names())
    with pytest.raises(ValueError, match="noise_tunnel adds Gaussian noise to the inputs, which are token ids"):
        attribute(model, ids, 0, AttributionConfig("saliency", noise_tunnel="smoothgrad"), modality=text)
    with pytest.raises(ValueError, match="baseline='mean' averages token ids"):
        attribute(
            model, ids, 0, AttributionConfig("integrated_gradients", baseline="mean"), train_inputs=ids, modality=text
        )
    with pytest.raises(ValueError, match="token id 40 is outside the vocabulary"):
        attribute(model, ids + 1, 0, AttributionConfig("saliency"), modality=text)
    with pytest.raises(ValueError, match="needs get_input_embeddings"):
        attribute(
            nn.Sequential(nn.Embedding(VOCAB, 4), nn.Flatten(), nn.Linear(28, 3)),
            ids,
            0,
            AttributionConfig("saliency"),
            modality=text,
        )


def test_grad_cam_on_a_model_without_convolution_is_one_line():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="no gradcam_layer or Conv1d/Conv2d to default to") as err:
        attribute(model, torch.randn(2, 1, 4, 4), 0, AttributionConfig("grad_cam"), modality=Image())
    assert "\n" not in str(err.value)


def test_token_integrated_gradients_map_equals_captum_midpoint_rule():
    from captum.attr import LayerIntegratedGradients

    torch.manual_seed(2)
    model, ids = TanhBag(), token_batch()
    target = torch.tensor([0, 1, 2, 1])
    emap = input_gradient_map(model, ids, target, "integrated_gradients", create_graph=False, n_steps=6)
    captum = LayerIntegratedGradients(model, model.emb).attribute(
        ids, baselines=torch.where(ids != PAD, PAD, ids), target=target, n_steps=6, method="riemann_middle"
    )
    torch.testing.assert_close(emap, captum.sum(-1) * (ids != PAD), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_token_training_maps_match_evaluation_and_train_every_weight(kind):
    torch.manual_seed(3)
    model, ids = TanhBag(), token_batch()
    emap = input_gradient_map(model, ids, 2, kind, create_graph=True, n_steps=64)
    assert emap.shape == ids.shape and emap.requires_grad and (emap[ids == PAD] == 0).all()
    evaluated = attribute(model, ids, 2, AttributionConfig(kind, n_steps=64), modality=Text(VOCAB, PAD))
    torch.testing.assert_close(emap.detach(), evaluated, rtol=2e-3, atol=1e-5)  # midpoint vs Gauss-Legendre
    emap.pow(2).sum().backward()
    assert model.emb.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0


def test_token_map_of_a_frozen_model_and_bad_kinds():
    model, ids = fasttext(), token_batch()
    model.requires_grad_(False)
    with torch.no_grad():
        emap = token_map(model, ids, torch.zeros(4, dtype=torch.long), kind="gradient_x_embedding", create_graph=False)
    torch.testing.assert_close(emap, linear_contributions(model, ids, 0))
    with pytest.raises(ValueError, match="grad_cam cannot explain token ids; kinds that work for text: saliency"):
        input_gradient_map(model, ids, 0, "grad_cam", create_graph=False)
    with pytest.raises(ValueError, match="unknown token map kind 'lime'"):
        token_map(model, ids, torch.zeros(4, dtype=torch.long), kind="lime", create_graph=False)


def test_embedding_that_runs_twice_is_refused():
    class Twice(TanhBag):
        def forward(self, ids):
            return super().forward(ids) + self.head(self.emb(ids).mean(1))

    model, ids = Twice(), token_batch()
    point = model.emb(ids).detach().requires_grad_(True)
    with pytest.raises(ValueError, match="the embedding layer ran 2 times"):
        gradient_at_embeddings(model, ids, point, torch.zeros(4, dtype=torch.long), create_graph=False)


class Attention(TanhBag):
    """One unmasked scaled_dot_product_attention over the embeddings (its fused CPU kernel's
    backward cannot be differentiated again)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids).unsqueeze(1)
        return self.head(torch.nn.functional.scaled_dot_product_attention(e, e, e).squeeze(1).mean(1))


def test_training_maps_of_attention_models_can_be_trained_through():
    torch.manual_seed(4)
    model, ids = Attention(dim=8), token_batch().clamp(min=2)
    emap = input_gradient_map(model, ids, 0, "integrated_gradients", create_graph=True, n_steps=2)
    emap.pow(2).sum().backward()
    assert model.emb.weight.grad.abs().sum() > 0


def test_saliency_of_a_layernorm_transformer_is_not_rounding_noise():
    """Behind a LayerNorm the gradient of the embeddings sums to 0 over the hidden units; the token
    saliency is its norm, so it equals the per-token norm of the embedding gradient computed by hand."""
    from kdlight.models import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier(VOCAB, 3, d_model=16, depth=1, heads=2, dropout=0.0, pad_token_id=PAD).eval()
    ids = token_batch()
    saliency = attribute(model, ids, 1, AttributionConfig("saliency"), modality=Text(VOCAB, PAD))
    grads = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: grads.append(out) or out)
    embedded_logits = model(ids)[:, 1].sum()
    hook.remove()
    (grad,) = torch.autograd.grad(embedded_logits, grads[0])
    assert grad.sum(-1).abs().max() < 1e-5 * grad.norm(dim=-1).max()  # the sum is rounding noise
    expected = grad.norm(dim=-1) * (ids != PAD)
    torch.testing.assert_close(saliency, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["occlusion", "kernel_shap", "shapley_value_sampling"])
def test_sequence_shorter_than_patch_size_is_one_group(method):
    # rows 2 and 3 of token_batch have 2 and 1 real tokens, fewer than patch_size=4: the whole
    # sentence is one group, whose exact value is f(x) - f(every real token replaced by UNK)
    model, ids = fasttext(), token_batch()[2:]
    maps = attribute(
        model, ids, 0, AttributionConfig(method, patch_size=4, n_samples=8), modality=Text(VOCAB, PAD, UNK)
    )
    with torch.no_grad():
        gap = model(ids)[:, 0] - model(torch.where(ids != PAD, torch.full_like(ids, UNK), ids))[:, 0]
    expected = gap[:, None] * (ids != PAD)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)

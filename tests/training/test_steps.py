"""The shared training steps: micro-batch losses add up to the batch's gradient, a local pass with lr 0 reports the
evaluation loss, evaluation leaves the model's mode alone, and ``sgd`` adds FedProx's term only when asked."""

from __future__ import annotations

import torch

from edgeflower.data.datasets import ImageData
from edgeflower.models.zoo import build_model
from edgeflower.training import ProximalSGD, evaluate, make_optimizer, micro_batch_loss, sgd, train_local


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg5", (1, 28, 28), 10, "none", width=0.25)  # no BatchNorm: micro-batches see one model


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_micro_batch_gradients_add_up_to_the_full_batch_gradient(fmnist_test):
    x, y = fmnist_test.x[:32], fmnist_test.y[:32]
    model = _model()
    loss, to_backprop = micro_batch_loss(model(x), y, batch_size=32, num_micro=1)
    assert to_backprop is loss
    loss.backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    for i in range(0, 32, 8):
        micro_batch_loss(model(x[i : i + 8]), y[i : i + 8], batch_size=32, num_micro=4)[1].backward()
    for got, want in zip(_grads(model), full, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_local_pass_with_lr_zero_reports_the_evaluation_loss(fmnist_test):
    data = ImageData(fmnist_test.x[:60], fmnist_test.y[:60], 10, "fashion-mnist")
    model = _model()
    batches = [(data.x[i : i + 20], data.y[i : i + 20]) for i in range(0, 60, 20)]
    result = train_local(model, batches, make_optimizer(model.parameters(), lr=0.0))
    loss, accuracy = evaluate(model, data, batch_size=25)
    assert result.num_examples == 60
    assert abs(result.loss - loss) < 1e-5
    assert 0.0 <= accuracy <= 1.0


def test_evaluate_restores_the_models_mode(fmnist_test):
    data = ImageData(fmnist_test.x[:10], fmnist_test.y[:10], 10, "fashion-mnist")
    model = _model()
    for training in (True, False):
        model.train(training)
        evaluate(model, data)
        assert model.training is training


def test_sgd_adds_the_proximal_term_only_with_a_positive_mu():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    assert type(sgd([w], lr=0.1)) is torch.optim.SGD
    opt = sgd([w], lr=0.5, proximal_mu=0.5)
    assert isinstance(opt, ProximalSGD)
    with torch.no_grad():
        w.add_(torch.tensor([2.0, 2.0]))  # drifted from the anchor (the value at construction)
    w.grad = torch.zeros_like(w)
    opt.step()  # the loss's gradient is zero: only mu * (w - w0) moves w back towards w0
    torch.testing.assert_close(w.detach(), torch.tensor([2.5, -0.5]))

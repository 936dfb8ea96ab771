"""Training end to end against PyTorch: the same network, initial weights, batches, loss and optimiser, in float64.

The modules, losses and optimiser steps are compared with torch one by one elsewhere; here they run together for a
few dozen steps (forward, loss, backward, update, batch-norm running statistics), so that anything composed wrongly
(an update's order of operations, a running variance's unbiasing, a gradient accumulated twice) shows as weights
that drift apart. In float64 the two frameworks agree to rounding: 1e-15 relative after 24 SGD steps, 1e-12 with the
adaptive optimisers. The Linear (or Conv2d) right before a batch norm has no bias here: the batch norm removes it, its
true gradient is zero, and the adaptive optimisers turn the rounding noise of that zero into full steps that differ
between any two implementations (two torch runs with the rows of a batch reordered differ as much).
"""
import numpy as np
import pytest

from cynet import nn, optim

torch = pytest.importorskip("torch")

STEPS = 24
TOLERANCE = 1e-9


def _mlp(rng):
    model = nn.Sequential(nn.Linear(20, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(),
                          nn.Linear(8, 4)).to(np.float64)
    model[1].weight.data[...] = rng.uniform(0.5, 1.5, 16)     # copied gains and shifts, not torch's defaults
    model[1].bias.data[...] = rng.uniform(-0.5, 0.5, 16)
    twin = torch.nn.Sequential(torch.nn.Linear(20, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    return model, twin, (lambda: rng.standard_normal((32, 20)))


def _cnn(rng):
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).to(np.float64)
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 8, 3, stride=2, padding=1),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4)).double()
    return model, twin, (lambda: rng.standard_normal((8, 3, 12, 12)))


OPTIMISERS = {
    "sgd-nesterov-wd": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                  foreach=False)),
    "adam-wd": (lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-2),
                lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, foreach=False)),
    "adamw": (lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False)),
    "rmsprop-momentum": (lambda p: optim.RMSProp(p, lr=1e-3, alpha=0.9, eps=1e-8, momentum=0.9, weight_decay=1e-3),
                         lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-8, momentum=0.9,
                                                       weight_decay=1e-3, foreach=False)),
    "adagrad-wd": (lambda p: optim.AdaGrad(p, lr=0.05, eps=1e-10, weight_decay=1e-3),
                   lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-10, weight_decay=1e-3, foreach=False)),
}


def _relative(a, b):
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


@pytest.mark.parametrize("network, optimiser", [("mlp", name) for name in OPTIMISERS] +
                         [("cnn", "sgd-nesterov-wd"), ("cnn", "adam-wd")])
def test_training_steps_match_torch(network, optimiser):
    rng = np.random.default_rng(7)
    model, twin, batch = {"mlp": _mlp, "cnn": _cnn}[network](rng)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    ours, theirs = OPTIMISERS[optimiser]
    opt, twin_opt = ours(model.parameters()), theirs(twin.parameters())
    loss = nn.SoftmaxCrossEntropy()
    model.train()
    twin.train()
    for step in range(STEPS):
        x, y = batch(), rng.integers(0, 4, 32 if network == "mlp" else 8)
        value = loss.forward(model(x), y)
        model.backward(loss.backward())
        opt.step()
        opt.zero_grad()
        twin_opt.zero_grad()
        twin_value = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        twin_value.backward()
        twin_opt.step()
        assert value == pytest.approx(twin_value.item(), rel=TOLERANCE, abs=1e-12), step
    twin_state = twin.state_dict()
    for key, value in model.state_dict().items():
        expected = twin_state[key].numpy()
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(expected) == STEPS
        else:
            assert _relative(value, expected) < TOLERANCE, key
    model.eval()
    twin.eval()
    x = batch()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert _relative(model(x), expected) < TOLERANCE

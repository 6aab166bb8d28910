"""The refiner's EMA: warm-up of the decay, buffers copied, temporary application restores the weights."""
import torch
from torch import nn

from nnunetv2_hidiff.training.ema import ModelEMA


def test_ema_update_rule_and_application():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(net, decay=0.9999)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(5.0)
    ema.update(net)  # first update: decay = min(0.9999, (1 + 0) / (10 + 0)) = 0.1
    assert torch.allclose(ema.shadow["0.weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    assert torch.equal(ema.shadow["1.running_mean"], torch.full((2,), 5.0))  # buffers are copied
    assert ema.current_decay() == (1 + 1) / (10 + 1)
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.9999

    current = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.applied_to(net):
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, current[k])

    restored = ModelEMA(net)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == ema.num_updates and torch.equal(restored.shadow["0.weight"], ema.shadow["0.weight"])

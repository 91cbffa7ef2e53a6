import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from mtrl.distributions import gaussian_entropy, gaussian_log_prob, squashed_gaussian


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    mean, log_std, action = torch.randn(4, 3), torch.randn(4, 3) * 0.5, torch.randn(4, 3)
    reference = Normal(mean, log_std.exp())
    assert torch.allclose(gaussian_log_prob(action, mean, log_std), reference.log_prob(action).sum(-1), atol=1e-5)
    assert torch.allclose(gaussian_entropy(log_std), reference.entropy().sum(-1), atol=1e-5)


def test_squashed_gaussian_log_prob_matches_torch_distributions():
    mean, log_std, noise = torch.randn(5, 3), torch.randn(5, 3) * 0.5, torch.randn(5, 3)
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
    assert torch.allclose(log_prob, reference.log_prob(action).sum(-1), atol=1e-4)
    assert action.abs().max() < 1

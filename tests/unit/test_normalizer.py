import torch

from mtrl.normalizer import RunningMeanStd


def test_running_mean_std_merges_batches_exactly_and_clips():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 4, generator=g, dtype=torch.float64) * 3 + 2 for n in (5, 1, 17)]
    normalizer = RunningMeanStd(4, clip=1.5)
    for batch in batches:
        normalizer.update(batch)
    data = torch.cat(batches)
    assert normalizer.count.item() == 23
    assert torch.allclose(normalizer.mean, data.mean(0)) and torch.allclose(normalizer.var, data.var(0, correction=0))
    out = normalizer(data.float())
    assert out.dtype == torch.float32 and out.abs().max() <= 1.5
    inside = (data - data.mean(0)) / data.std(0, correction=0)
    mask = inside.abs() < 1.5
    assert torch.allclose(out.double()[mask], inside[mask], atol=1e-5)
    assert {"mean", "var", "count"} <= set(normalizer.state_dict())

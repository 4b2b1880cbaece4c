"""nanocodec.inception against pytorch-fid, the FID implementation papers report: same 2048-d pool
features for the same weights, same Frechet distance.

pytorch-fid builds its network from torchvision's Inception-v3. On a CPU-only torch the PyPI
torchvision wheel cannot load (it is a CUDA build: its _C.so links libtorch_cuda.so and
libc10_cuda.so, and `import torchvision` fails with "operator torchvision::nms does not exist"),
so these tests skip there with that reason; they run wherever `pip install -e ".[fid]"` imports.
"""
import numpy as np
import pytest
import torch

from nanocodec import inception as ours


def _pytorch_fid():
    try:
        from pytorch_fid import fid_score
        from pytorch_fid import inception as theirs
    except Exception as e:  # a broken torchvision raises RuntimeError/OSError, not only ImportError
        pytest.skip(f"pytorch-fid does not import here ({type(e).__name__}: {e}); "
                    'pip install -e ".[fid]" beside a CUDA torch (see this module\'s docstring)')
    return theirs, fid_score


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights and batch-norm statistics in the FID weights' layout (with their 1008-way fc)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in ours.FIDInceptionV3().state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = t
        elif name.endswith("running_var"):
            state[name] = torch.rand(t.shape, generator=g) + 0.5
        elif name.endswith(("bn.weight", "running_mean", "bn.bias")):
            state[name] = torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("bn.weight") else 0.0)
        else:  # conv weights, scaled so activations stay O(1) through 94 layers
            fan_in = t[0].numel()
            state[name] = torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def both_networks(tmp_path_factory):
    theirs, _ = _pytorch_fid()
    state = _random_state(0)
    path = tmp_path_factory.mktemp("inception") / "random_fid_inception.pth"
    torch.save(state, path)
    mine = ours.load_inception(path)
    real_loader = theirs.load_state_dict_from_url
    theirs.load_state_dict_from_url = lambda *a, **kw: state  # pytorch-fid would download the weights here
    try:
        reference = theirs.InceptionV3([theirs.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        theirs.load_state_dict_from_url = real_loader
    return mine, reference


def test_pool_features_equal_pytorch_fid(both_networks):
    mine, reference = both_networks
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 64, 80, generator=g)  # not square, not 299: the resize is compared too
    with torch.inference_mode():
        got = mine(images)
        want = reference(images)[0].flatten(1)
    assert got.shape == want.shape == (3, 2048)
    scale = want.abs().max().item()
    assert scale > 0
    err = (got - want).abs().max().item()
    assert err <= 1e-5 * scale, f"max abs error {err:.3g} at feature scale {scale:.3g}"


def test_frechet_distance_equals_pytorch_fid():
    _, fid_score = _pytorch_fid()
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 64))
    b = rng.normal(size=(200, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5
    (mu1, s1), (mu2, s2) = ours.gaussian_stats(a), ours.gaussian_stats(b)
    want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert ours.frechet_to_features(mu1, s1, b) == pytest.approx(want, rel=1e-8)

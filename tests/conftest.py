"""Test-wide setup: the Triton interpreter on CPU, the hypothesis profile, shared fixtures."""
import os

import torch

if not torch.cuda.is_available():
    # Must happen before any kernel module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Under CI (CI=true) the examples are derandomized, so a landing never hangs on a lucky draw and a
# failure there reproduces; developers' runs keep exploring new examples each time.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("CI") == "true",
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def poison(monkeypatch):
    """Fill every torch.empty / empty_like with NaN, so any element a kernel never writes shows."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: nan(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: nan(real_empty_like(*a, **kw)))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread (`pytestmark = pytest.mark.usefixtures("one_thread")`).

    Tiny matmuls gain nothing from threads, and on a loaded machine OpenMP barriers make them 30x
    slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory: `tiny_llama(vocab_size, max_seq_len)` is the seeded, randomly initialised 2-layer
    GQA Llama (dim 32) that the sampling tests draw from."""
    from nanocodec.model import Llama, ModelConfig

    def make(vocab_size: int, max_seq_len: int):
        torch.manual_seed(0)
        config = ModelConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                             max_seq_len=max_seq_len)
        return Llama(config).eval()

    return make


def smooth_images(count: int, size: int = 48, seed: int = 0) -> list:
    """`count` size x size RGB images: colour waves of a frequency of their own plus Gaussian noise
    (what JPEG codes compactly, yet no two alike)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for i in range(count):
        base = np.stack([np.sin(xx / (3 + i % 7) + c) * np.cos(yy / (4 + i % 5)) for c in range(3)], -1)
        pixels = np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


@pytest.fixture(scope="session")
def prepared_images(tmp_path_factory):
    """A maker of real prepared JPEG folders: `prepared_images(name, images, **options)` saves
    `images` (a list of PIL images, or a count of `smooth_images`) as ROOT/images/im00.png, ...,
    prepares them into ROOT/data with nanocodec.prepare (one worker, `options`) and returns ROOT."""
    from nanocodec.prepare import prepare

    def make(name: str, images, **options):
        root = tmp_path_factory.mktemp(name)
        (root / "images").mkdir()
        for i, image in enumerate(smooth_images(images) if isinstance(images, int) else images):
            image.save(root / "images" / f"im{i:02d}.png")
        prepare("jpeg", str(root / "images"), root / "data", workers=1, **options)
        return root

    return make

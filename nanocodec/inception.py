"""FID in plain torch: the FID Inception-v3 network, its pool features, and the Frechet distance.

Owns: an Inception-v3 built to the layout of the standard FID weights (pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`, a port of TensorFlow's 2015-12-05 graph: same module and
parameter names, the TF-specific pooling of that graph), loading those weights from a local file
with a clear error for a wrong one (nothing is ever downloaded), 2048-d pool features of images
with pytorch-fid's preprocessing (RGB in [0, 1], bilinear resize to 299, scale to [-1, 1]), and the
Frechet distance between two feature Gaussians computed in float64 without scipy.
Does not own: which images are compared (nanocodec.eval).

Differences of the FID graph from torchvision's Inception-v3, kept here on purpose: the average
pools inside the A, C and first E blocks exclude padding from the average (TensorFlow's
behaviour), and the last E block pools with max instead of average.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

FEATURE_DIM = 2048
INPUT_SIZE = 299
# Extra entries a real weight file may carry that the feature extractor does not use.
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_KEYS = {"fc.weight", "fc.bias"}


class InceptionWeightsError(ValueError):
    """A weight file that is missing, unreadable or not laid out like the FID Inception weights."""


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as TensorFlow), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """The 8x8 block; `max_pool` selects the FID graph's max pooling branch of its last block."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the final average pool: images (N, 3, H, W) in [0, 1] -> (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(path: str | os.PathLike, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception with weights from a local pytorch-fid file (.pth) or a .safetensors copy."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InceptionWeightsError(
            f"{path}: no such file. FID needs the standard FID Inception weights "
            "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth) on disk; nothing is downloaded"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a corrupt file
        raise InceptionWeightsError(f"{path}: cannot read the weights: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    model = FIDInceptionV3()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
    missing = sorted(set(expected) - set(state))
    unknown = sorted(k for k in set(state) - set(expected) if k not in _IGNORED_KEYS and not k.endswith(_IGNORED_SUFFIXES))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unknown or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unknown)} unexpected (e.g. {unknown[:3]})" if unknown else "",
                 f"{len(wrong)} with the wrong shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
                 f"instead of {tuple(expected[wrong[0]].shape)})" if wrong else ""]
        raise InceptionWeightsError(f"{path}: not the FID Inception-v3 layout: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: state[k].float() for k in expected}, strict=False)
    return model.eval().to(device)


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB float (N, 3, H, W) in [0, 1], the input pytorch-fid gives the network."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def pool_features(model: FIDInceptionV3, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """2048-d pool features (float64, one row per image), in batches on the model's device."""
    device = next(model.parameters()).device
    rows = [model(images_to_tensor(images[i : i + batch_size]).to(device)).double().cpu()
            for i in range(0, len(images), batch_size)]
    return torch.cat(rows).numpy() if rows else np.zeros((0, FEATURE_DIM))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of feature rows (as pytorch-fid: numpy.cov, rowvar=False)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which equal those of
    the symmetric PSD matrix sqrt(S1) S2 sqrt(S1): one symmetric eigensolve, no complex sqrtm.
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.atleast_2d(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched statistics: means {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"covariances {tuple(s1.shape)}/{tuple(s2.shape)}")
    root1 = _sqrt_psd((s1 + s1.T) / 2)
    middle = root1 @ s2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + s1.trace() + s2.trace() - 2 * trace_sqrt)
    return max(value, 0.0) if math.isfinite(value) else value


def frechet_to_features(mu: np.ndarray, sigma: np.ndarray, features: np.ndarray) -> float:
    """The Frechet distance between N(mu, sigma) and the Gaussian fitted to `features` (n, d).

    Exact, and cheap when n <= d: with X the centred features and S = X^T X / (n - 1), the nonzero
    eigenvalues of sigma S are those of the n x n matrix X sigma X^T / (n - 1).
    """
    features = np.asarray(features, dtype=np.float64)
    mu2, sigma2 = gaussian_stats(features)
    n, d = features.shape
    if n > d:
        return frechet_distance(mu, sigma, mu2, sigma2)
    x = torch.as_tensor(features - mu2)
    small = x @ torch.as_tensor(np.asarray(sigma, dtype=np.float64)) @ x.T / (n - 1)
    trace_sqrt = torch.linalg.eigvalsh((small + small.T) / 2).clamp(min=0).sqrt().sum()
    diff = np.asarray(mu, dtype=np.float64) - mu2
    value = float(diff @ diff + np.trace(sigma) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(value, 0.0) if math.isfinite(value) else value

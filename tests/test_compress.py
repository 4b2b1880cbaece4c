"""nanocodec.compress (the model as a lossless JPEG coder) and nanocodec.surprise, on tiny checkpoints.

Two kinds of checkpoint: random byte-level models of several image sizes, and a model trained for
a few steps on a prepared folder (BPE tokens of more than one byte).
"""
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from nanocodec import checkpoint, jpeg
from nanocodec.bpe import Tokenizer
from nanocodec.compress import CompressError, Compressor, Container, main, model_stream, quantize
from nanocodec.model import Llama, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = (16, 32)
CONTEXT = 1024


def codec(size: int) -> dict:
    return {"size": size, "quality": 25, "subsampling": "4:2:0", "restart_blocks": 1}


def save_checkpoint(root: Path, tokenizer: Tokenizer, manifest: dict, seed: int, model: Llama | None = None) -> Path:
    data = root / "data"
    if not (data / "manifest.json").exists():
        data.mkdir(parents=True)
        tokenizer.save(data / "tokenizer.json")
        (data / "manifest.json").write_text(json.dumps(manifest))
    if model is None:
        torch.manual_seed(seed)
        model = Llama(ModelConfig(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                  multiple_of=16, max_seq_len=CONTEXT))
    checkpoint.save(root / "ckpt", model.state_dict(), {}, step=0, model_config=asdict(model.config),
                    train_config={}, data_dir=data)
    return root / "ckpt"


@pytest.fixture(scope="module")
def random_ckpts(tmp_path_factory):
    """{size: Compressor} of random byte-level models, and a second model of size 32 (other weights)."""
    tokenizer = Tokenizer([])
    out = {}
    for size in SIZES:
        manifest = {"kind": "jpeg", "codec": codec(size), "tokenizer_sha256": tokenizer.sha256}
        out[size] = Compressor(save_checkpoint(tmp_path_factory.mktemp(f"r{size}"), tokenizer, manifest, seed=size))
    other = {"kind": "jpeg", "codec": codec(32), "tokenizer_sha256": tokenizer.sha256}
    out["other"] = Compressor(save_checkpoint(tmp_path_factory.mktemp("other"), tokenizer, other, seed=99))
    return out


def picture(size: int, seed: int, smooth: float) -> Image.Image:
    """A size x size test image: a gradient with `smooth` of it, noise for the rest."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    ramp = np.stack([x * 255 / size, y * 255 / size, (x + y) * 127 / size], -1)
    pixels = smooth * ramp + (1 - smooth) * rng.integers(0, 256, (size, size, 3))
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def trained(prepared_images):
    """A Compressor of a model trained for a few steps on a prepared 32 px folder, and that folder."""
    from nanocodec.data import TokenStream

    pictures = [picture(48, i, smooth=0.85) for i in range(24)]
    root = prepared_images("trained", pictures, size=32, merges=40, val_fraction=0.2)
    tokenizer = Tokenizer.load(root / "data" / "tokenizer.json")
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                              multiple_of=16, max_seq_len=CONTEXT))
    stream = TokenStream(root / "data", "train", context=128, batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        x, y = next(stream)
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return Compressor(save_checkpoint(root, tokenizer, {}, seed=0, model=model.eval())), root


# --- quantization ------------------------------------------------------------------------------------


@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=600), st.integers(8, 24))
@example([-2.220446049250313e-16, 0.0], 8)  # a near-tie: both tokens get the top frequency
def test_quantize_gives_every_token_a_frequency_and_sums_exactly(values, precision):
    logits = torch.tensor(values, dtype=torch.float32)
    if len(values) >= 1 << precision:
        return
    freq = quantize(logits, precision)
    assert freq.dtype == np.int64 and freq.min() >= 1 and freq.sum() == 1 << precision
    assert freq[int(torch.softmax(logits.double(), -1).argmax())] == freq.max()  # ties may share the top


def test_quantize_follows_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
    freq = quantize(logits, 16)
    assert np.abs(freq / 2**16 - [0.5, 0.25, 0.125, 0.125]).max() < 1e-4


# --- round trips -------------------------------------------------------------------------------------


@settings(max_examples=8)
@given(size=st.sampled_from(SIZES), seed=st.integers(0, 2**16), smooth=st.floats(0, 1), full=st.booleans())
def test_random_model_round_trip_is_byte_identical_at_its_cross_entropy(random_ckpts, size, seed, smooth, full):
    compressor = random_ckpts[size]
    stream = jpeg.encode(picture(size, seed, smooth), size=size)
    original = jpeg.restore(stream) if full else stream
    coded = compressor.compress(original, "x.jpg")
    assert coded.stream == stream and Container.from_bytes(coded.container).tables == full
    name, back = compressor.decompress(coded.container)
    assert name == "x.jpg" and back.original == original
    assert coded.payload_bytes <= 1.01 * coded.bits.sum() / 8 + 8
    np.testing.assert_array_equal(back.bits, coded.bits)  # the decoder saw the encoder's distributions


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), smooth=st.floats(0.5, 1), full=st.booleans())
def test_trained_model_round_trip_and_codes_below_the_random_model(trained, random_ckpts, seed, smooth, full):
    compressor, _ = trained
    stream = jpeg.encode(picture(40, seed, smooth), size=32)
    original = jpeg.restore(stream) if full else stream
    coded = compressor.compress(original, "photo.jpeg")
    assert compressor.decompress(coded.container)[1].original == original
    assert coded.payload_bytes <= 1.01 * coded.bits.sum() / 8 + 8
    assert coded.bits.sum() < random_ckpts[32].compress(original, "photo.jpeg").bits.sum()
    assert len(coded.tokens) < len(stream)  # BPE tokens of more than one byte were coded


def test_cached_coding_path_gives_the_full_forward_cross_entropy(trained):
    from nanocodec.surprise import token_bits

    compressor, _ = trained
    coded = compressor.compress(jpeg.encode(picture(32, 1, 0.9), size=32), "a.jpg")
    full = token_bits(compressor.model, coded.tokens, compressor.tokenizer.bos_id)
    np.testing.assert_allclose(coded.bits, full, rtol=1e-4, atol=1e-4)


def test_round_trip_survives_a_process_restart_through_the_cli(trained, tmp_path):
    compressor, root = trained
    originals = {}
    for i in range(4):
        stream = jpeg.encode(picture(32, 100 + i, 0.8), size=32)
        originals[f"im{i}.jpg"] = jpeg.restore(stream) if i % 2 else stream
        (tmp_path / f"im{i}.jpg").write_bytes(originals[f"im{i}.jpg"])
    ckpt = str(root / "ckpt")
    assert main([ckpt, *(str(tmp_path / n) for n in originals), "--out", str(tmp_path / "c"), "--threads", "2"]) == 0
    containers = sorted(str(p) for p in (tmp_path / "c").glob("*.nclm"))
    assert len(containers) == 4 and all(Container.from_bytes(Path(c).read_bytes()).threads == 2 for c in containers)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "nanocodec.compress", ckpt, "--decompress", *containers,
                           "--out", str(tmp_path / "d")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name, data in originals.items():
        assert (tmp_path / "d" / name).read_bytes() == data


# --- refusals ----------------------------------------------------------------------------------------


def pillow_jpeg(im: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **options)
    return buf.getvalue()


@pytest.mark.parametrize("options, words", [  # words: a regular expression
    (dict(quality=75, subsampling="4:2:0", restart_marker_blocks=1), "quality 75; the checkpoint's format is quality 25"),
    (dict(quality=25, subsampling="4:2:0", restart_marker_blocks=1, progressive=True), "progressive"),
    (dict(quality=25, subsampling="4:2:0"), "no restart markers"),
    (dict(quality=90, subsampling="4:2:0", progressive=True), "progressive.*no restart markers.*quality 90"),
    (dict(quality=25, subsampling="4:2:0", restart_marker_blocks=2), "restart interval 2 MCUs"),
    (dict(quality=25, subsampling="4:4:4", restart_marker_blocks=1), "sampling factors"),
    (dict(quality=25, subsampling="4:2:0", restart_marker_blocks=1, optimize=True), "Huffman tables"),
    (dict(quality=25, subsampling="4:2:0", restart_marker_blocks=1, comment=b"hi"), r"extra header segments \(markers FE\)"),
])
def test_a_jpeg_in_another_format_is_refused_saying_what_differs(options, words):
    data = pillow_jpeg(picture(32, 0, 0.5), **options)
    with pytest.raises(CompressError, match=words):
        model_stream(data, codec(32))


def test_another_size_and_non_jpegs_are_refused(random_ckpts):
    with pytest.raises(CompressError, match="size 16x16; the checkpoint's format is 32x32"):
        random_ckpts[32].compress(jpeg.encode(picture(16, 0, 0.5), size=16), "small.jpg")
    with pytest.raises(CompressError, match="not a JPEG"):
        model_stream(b"\x89PNG\r\n\x1a\n....", codec(32))


def test_a_container_of_another_checkpoint_is_refused(random_ckpts):
    coded = random_ckpts[32].compress(jpeg.encode(picture(32, 3, 0.9), size=32), "a.jpg")
    with pytest.raises(CompressError, match="another checkpoint"):
        random_ckpts["other"].decompress(coded.container)


def reseal(body: bytes) -> bytes:
    """A container body with a fresh crc32: a corruption the crc cannot see."""
    return body + struct.pack("<I", zlib.crc32(body))


@settings(max_examples=25)
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_truncated_or_corrupted_container_is_an_error_never_a_file(random_ckpts, cut, flip, bit):
    compressor = random_ckpts[16]
    coded = compressor.compress(jpeg.encode(picture(16, 7, 0.9), size=16), "a.jpg").container
    with pytest.raises(CompressError, match="truncated|corrupt|magic"):
        compressor.decompress(coded[: cut % len(coded)])
    broken = bytearray(coded)
    broken[flip % len(coded)] ^= 1 << bit
    with pytest.raises(CompressError):
        compressor.decompress(bytes(broken))


def test_a_corrupt_payload_behind_a_valid_crc_fails_the_original_checksum(random_ckpts):
    compressor = random_ckpts[16]
    coded = compressor.compress(jpeg.encode(picture(16, 8, 0.9), size=16), "a.jpg").container
    box = Container.from_bytes(coded)
    payload = bytearray(box.payload)
    payload[len(payload) // 2] ^= 0x10
    forged = replace(box, payload=bytes(payload)).to_bytes()
    with pytest.raises(CompressError, match="checksum|no end of stream"):
        compressor.decompress(forged)


def test_recorded_arithmetic_is_enforced(random_ckpts, monkeypatch):
    compressor = random_ckpts[16]
    original = jpeg.encode(picture(16, 9, 0.9), size=16)
    box = Container.from_bytes(compressor.compress(original, "a.jpg").container)
    with pytest.raises(CompressError, match="triton kernels"):
        compressor.decompress(replace(box, kernels="triton").to_bytes())
    with pytest.warns(UserWarning, match="another platform"):
        assert compressor.decompress(replace(box, platform_crc=box.platform_crc ^ 1).to_bytes())[1].original == original
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    with pytest.raises(CompressError, match="NANOCODEC_KERNELS"):
        compressor.compress(original, "a.jpg")


def test_a_container_naming_a_path_is_refused(random_ckpts):
    compressor = random_ckpts[16]
    box = Container.from_bytes(compressor.compress(jpeg.encode(picture(16, 2, 0.9), size=16), "a.jpg").container)
    with pytest.raises(CompressError, match="not a plain file name"):
        compressor.decompress(replace(box, name="../evil.jpg").to_bytes())


def test_cli_skips_bad_files_keeps_existing_outputs_and_exits_1(random_ckpts, tmp_path, capsys):
    compressor = random_ckpts[16]
    ckpt = str(compressor.ckpt)
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg.encode(picture(16, 4, 0.9), size=16))
    bad.write_bytes(pillow_jpeg(picture(16, 4, 0.9), quality=90, restart_marker_blocks=1))
    assert main([ckpt, str(good), str(bad), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "bad.jpg: quality 90" in err and "1 of 2 files skipped" in err
    before = (tmp_path / "c" / "good.jpg.nclm").read_bytes()
    assert main([ckpt, str(good), "--out", str(tmp_path / "c")]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "c" / "good.jpg.nclm").read_bytes() == before
    assert main([ckpt, "--decompress", str(tmp_path / "c" / "good.jpg.nclm"), "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "good.jpg").read_bytes() == good.read_bytes()


# --- surprise maps -----------------------------------------------------------------------------------


def test_bits_per_mcu_place_every_scan_token_on_its_restart_interval(trained):
    from nanocodec.eval import HEADERS, token_lengths, token_regions
    from nanocodec.surprise import mcu_bits

    compressor, _ = trained
    coded = compressor.compress(jpeg.encode(picture(32, 5, 0.7), size=32), "a.jpg")
    per_mcu = mcu_bits(coded.stream, coded.tokens, coded.bits, compressor.tokenizer)
    assert per_mcu.shape == (2, 2) and np.isfinite(per_mcu).all() and (per_mcu > 0).all()
    tokenizer = compressor.tokenizer
    regions = token_regions(np.array(coded.tokens[:-1]), tokenizer, token_lengths(tokenizer))
    assert per_mcu.sum() == pytest.approx(coded.bits[:-1][regions != HEADERS].sum())
    # the first MCU's bits are those of the tokens between SOS and the first RST marker
    offsets = jpeg.restart_offsets(coded.stream)
    lengths = np.array([len(tokenizer.token_bytes(t)) for t in coded.tokens[:-1]])
    starts = np.cumsum(lengths) - lengths
    first = (starts >= offsets[0]) & (starts < offsets[1])
    assert per_mcu[0, 0] == pytest.approx(coded.bits[:-1][first].sum())


def test_compress_surprise_and_eval_surprise_write_pictures(trained, tmp_path):
    from nanocodec import eval as evaluation

    compressor, root = trained
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg.restore(jpeg.encode(picture(32, 6, 0.8), size=32)))
    assert main([str(root / "ckpt"), str(image), "--out", str(tmp_path / "c"), "--surprise"]) == 0
    png = Image.open(tmp_path / "c" / "a.jpg.surprise.png")
    assert png.width > 2 * png.height  # the image beside its heat map and scale
    report = evaluation.main([str(root / "ckpt"), "--metrics=", "--surprise=2", f"--out={tmp_path / 'eval'}"])
    assert report["surprise"]["images"] == 2 and report["surprise"]["mean_bits_per_mcu"] > 0
    assert evaluation.split_argv(["ck", "--surprise", "--metrics="]) == ["--ckpt", "ck", "--surprise=4", "--metrics="]
    assert evaluation.split_argv(["ck", "--metrics=", "--surprise"])[-1] == "--surprise=4"
    column = Image.open(tmp_path / "eval" / "surprise.png")
    assert column.height >= 2 * 256


# --- the bench ---------------------------------------------------------------------------------------


def test_bench_compares_every_method_on_the_same_files_and_reports_refusals(random_ckpts, tmp_path, capsys):
    from nanocodec.bench import compress as bench

    compressor = random_ckpts[16]
    ckpt = str(compressor.ckpt)
    for i in range(2):
        (tmp_path / f"im{i}.jpg").write_bytes(jpeg.restore(jpeg.encode(picture(16, 20 + i, 0.9), size=16)))
    bench.main([f"--ckpt={ckpt}", f"--source={tmp_path}", "--repeats=1", f"--json={tmp_path / 'r.json'}"])
    report = json.loads((tmp_path / "r.json").read_text())
    originals = sum(len((tmp_path / f"im{i}.jpg").read_bytes()) for i in range(2))
    for name in ("ours", "Lepton", "JPEG XL", "xz -9e"):
        row = report["methods"][name]
        assert row["files"] == 2 and row["original_bytes"] == originals and 0 < row["ratio"]
    ours = report["regions"]["ours"]
    assert sum(ours["original_bytes"].values()) == originals and ours["table_bytes"] > 0
    assert report["methods"]["ours"]["coded_bytes"] * 8 == pytest.approx(
        sum(ours["bits"].values()) + ours["container_field_bits"] + ours["coding_loss_bits"])
    assert 0 <= ours["coding_loss_bits"] <= 0.01 * sum(ours["bits"].values()) + 2 * 64
    assert "entropy-coded data" in capsys.readouterr().out
    bench.main([f"--ckpt={random_ckpts[32].ckpt}", f"--source={tmp_path}", "--repeats=1"])
    out = capsys.readouterr().out
    assert "| ours | 0 | refused all 2: CompressError: size 16x16" in out and "Lepton by region (ours did not run)" in out


@pytest.mark.slow
def test_many_files_round_trip_through_a_fresh_process(trained, tmp_path):
    compressor, root = trained
    originals = {f"f{i:02d}.jpg": jpeg.restore(jpeg.encode(picture(32, 1000 + i, (i % 10) / 10), size=32)) for i in range(40)}
    for name, data in originals.items():
        (tmp_path / name).write_bytes(data)
    assert main([str(root / "ckpt"), *(str(tmp_path / n) for n in originals), "--out", str(tmp_path / "c")]) == 0
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "nanocodec.compress", str(root / "ckpt"), "--decompress",
                           *sorted(str(p) for p in (tmp_path / "c").glob("*.nclm")), "--out", str(tmp_path / "d")],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    assert {name: (tmp_path / "d" / name).read_bytes() for name in originals} == originals

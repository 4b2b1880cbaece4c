"""nanocodec.eval, nanocodec.inception and the sample.py entry point, on a tiny random checkpoint."""
import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nanocodec import data, jpeg
from nanocodec.inception import FEATURE_DIM, InceptionWeightsError, frechet_distance, gaussian_stats, load_inception

# --- Frechet distance ---------------------------------------------------------------------------------


def random_rotation(n, rng):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def test_frechet_of_gaussians_with_shared_eigenvectors_is_the_closed_form():
    rng = np.random.default_rng(0)
    n = 12
    q = random_rotation(n, rng)
    d1, d2 = rng.uniform(0.05, 3.0, n), rng.uniform(0.05, 3.0, n)
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_against_an_isotropic_gaussian_and_in_one_dimension():
    rng = np.random.default_rng(1)
    n, a = 9, 2.5
    q = random_rotation(n, rng)
    d = rng.uniform(0.1, 4.0, n)
    sigma = q @ np.diag(d) @ q.T  # eigenvectors unrelated to the isotropic one's
    expected = n * a + d.sum() - 2 * np.sqrt(a) * np.sqrt(d).sum()
    assert frechet_distance(np.zeros(n), a * np.eye(n), np.zeros(n), sigma) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(9.0 + 1.0)
    assert frechet_distance(np.ones(n), sigma, np.ones(n), sigma) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", [5, 30, 80])
def test_frechet_to_features_equals_the_full_computation(n):
    from nanocodec.inception import frechet_to_features

    rng = np.random.default_rng(n)
    d = 40
    reference = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.3
    features = rng.normal(size=(n, d)) * 1.5 + 0.2
    mu, sigma = gaussian_stats(reference)
    assert frechet_to_features(mu, sigma, features) == pytest.approx(frechet_distance(mu, sigma, *gaussian_stats(features)), rel=1e-6)


def test_frechet_of_sampled_features_approaches_the_truth_and_rejects_mismatches():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4I): 3 * 1 + 3 * (1 - 2)^2 = 6
    assert frechet_distance(*gaussian_stats(a), *gaussian_stats(b)) == pytest.approx(6.0, rel=0.03)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# --- Inception: the pytorch-fid weight layout, written independently here ---------------------------------


def conv(name, cin, cout, kh, kw=None):
    return [(name, cin, cout, kh, kw or kh)]


def block_a(name, cin, pool):
    return (conv(f"{name}.branch1x1", cin, 64, 1) + conv(f"{name}.branch5x5_1", cin, 48, 1)
            + conv(f"{name}.branch5x5_2", 48, 64, 5) + conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
            + conv(f"{name}.branch3x3dbl_2", 64, 96, 3) + conv(f"{name}.branch3x3dbl_3", 96, 96, 3)
            + conv(f"{name}.branch_pool", cin, pool, 1))


def block_c(name, c7):
    return (conv(f"{name}.branch1x1", 768, 192, 1) + conv(f"{name}.branch7x7_1", 768, c7, 1)
            + conv(f"{name}.branch7x7_2", c7, c7, 1, 7) + conv(f"{name}.branch7x7_3", c7, 192, 7, 1)
            + conv(f"{name}.branch7x7dbl_1", 768, c7, 1) + conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1)
            + conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7) + conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1)
            + conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7) + conv(f"{name}.branch_pool", 768, 192, 1))


def block_e(name, cin):
    return (conv(f"{name}.branch1x1", cin, 320, 1) + conv(f"{name}.branch3x3_1", cin, 384, 1)
            + conv(f"{name}.branch3x3_2a", 384, 384, 1, 3) + conv(f"{name}.branch3x3_2b", 384, 384, 3, 1)
            + conv(f"{name}.branch3x3dbl_1", cin, 448, 1) + conv(f"{name}.branch3x3dbl_2", 448, 384, 3)
            + conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3) + conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
            + conv(f"{name}.branch_pool", cin, 192, 1))


FID_INCEPTION_CONVS = (
    conv("Conv2d_1a_3x3", 3, 32, 3) + conv("Conv2d_2a_3x3", 32, 32, 3) + conv("Conv2d_2b_3x3", 32, 64, 3)
    + conv("Conv2d_3b_1x1", 64, 80, 1) + conv("Conv2d_4a_3x3", 80, 192, 3)
    + block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64) + block_a("Mixed_5d", 288, 64)
    + conv("Mixed_6a.branch3x3", 288, 384, 3) + conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    + conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3) + conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    + block_c("Mixed_6b", 128) + block_c("Mixed_6c", 160) + block_c("Mixed_6d", 160) + block_c("Mixed_6e", 192)
    + conv("Mixed_7a.branch3x3_1", 768, 192, 1) + conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    + conv("Mixed_7a.branch7x7x3_1", 768, 192, 1) + conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    + conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1) + conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    + block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048)
)


def fid_state_dict(seed):
    """Random weights in the layout of pt_inception-2015-12-05 (with its 1008-class fc)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, cin, cout, kh, kw in FID_INCEPTION_CONVS:
        fan_in = cin * kh * kw
        state[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=gen) * math.sqrt(2.0 / fan_in)
        state[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=gen)
        state[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=gen)
        state[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=gen)
        state[f"{name}.bn.running_var"] = 1 + torch.rand(cout, generator=gen)
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(fid_state_dict(0), path)
    return path


def test_inception_loads_the_standard_layout_and_gives_2048_d_features(inception_file, tmp_path):
    from nanocodec.inception import pool_features

    model = load_inception(inception_file)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    features = pool_features(model, images, batch_size=2)
    assert features.shape == (3, FEATURE_DIM) and np.isfinite(features).all()
    assert np.all(features >= 0)  # an average of ReLU outputs
    assert not np.allclose(features[0], features[1])
    np.testing.assert_allclose(pool_features(model, images[:1]), features[:1], rtol=1e-4, atol=1e-5)
    other = tmp_path / "other.pth"
    torch.save(fid_state_dict(1), other)
    assert not np.allclose(pool_features(load_inception(other), images[:1]), features[:1])


def test_inception_rejects_wrong_files_clearly(tmp_path):
    with pytest.raises(InceptionWeightsError, match="no such file.*nothing is downloaded"):
        load_inception(tmp_path / "missing.pth")
    state = fid_state_dict(0)
    state["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InceptionWeightsError, match="1 missing.*1 with the wrong shape"):
        load_inception(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="cannot read"):
        load_inception(path)


# --- a tiny random checkpoint on a tiny prepared folder -------------------------------------------------

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint_dir(prepared_images):
    from nanocodec import checkpoint
    from nanocodec.bpe import Tokenizer
    from nanocodec.model import Llama, ModelConfig

    root = prepared_images("ckpt", 16, size=SIZE, merges=30, val_fraction=0.3)
    tokenizer = Tokenizer.load(root / "data" / "tokenizer.json")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         multiple_of=16, max_seq_len=1024)
    torch.manual_seed(0)
    model = Llama(config)
    checkpoint.save(root / "ckpt", model.state_dict(), {}, step=0, model_config=asdict(config),
                    train_config={"context": 64}, data_dir=root / "data")
    return root


def test_byte_regions_of_a_real_stream():
    from nanocodec.eval import ENTROPY, HEADERS, RESTART, byte_regions

    stream = jpeg.encode(Image.radial_gradient("L").convert("RGB"), size=48)
    labels = byte_regions(stream)
    scan = jpeg.frame_info(stream).scan_start
    rst = [o - 2 for o in jpeg.restart_offsets(stream)[1:]]
    assert len(rst) == jpeg.mcu_count(stream) - 1
    assert (labels[:scan] == HEADERS).all() and (labels[-2:] == HEADERS).all()
    expected = np.full(len(stream), ENTROPY)
    expected[:scan], expected[-2:] = HEADERS, HEADERS
    for o in rst:
        expected[o : o + 2] = RESTART
    assert np.array_equal(labels, expected)


def test_bits_per_byte_by_region_matches_hand_computation(checkpoint_dir):
    from nanocodec.bpe import Tokenizer
    from nanocodec.eval import bits_per_byte
    from nanocodec.model import Llama, ModelConfig

    path = checkpoint_dir / "data"
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    model = Llama(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                              multiple_of=16, max_seq_len=64))
    torch.nn.init.zeros_(model.output.weight)  # uniform predictions: every target costs log2(V) bits
    result = bits_per_byte(model, tokenizer, path, "jpeg", context=64, batch_size=3, progress=False)
    streams = [tokenizer.decode(doc) for doc in data.documents(path, "val")]
    targets = sum(len(doc) + 1 for doc in data.documents(path, "val"))  # tokens + EOS
    codec_bytes = data.codec_bytes(path, "val")
    assert result["bytes"] == codec_bytes == sum(map(len, streams)) and result["tokens"] == targets
    assert result["bits_per_byte"] == pytest.approx(targets * math.log2(tokenizer.vocab_size) / codec_bytes)
    regions = result["regions"]
    rst_markers = sum(len(jpeg.restart_offsets(s)) - 1 for s in streams)
    assert regions["restart"]["bytes"] == 2 * rst_markers
    assert sum(r["bytes"] for r in regions.values()) == codec_bytes
    for r in regions.values():
        assert r["bits_per_byte"] == pytest.approx(r["tokens"] * math.log2(tokenizer.vocab_size) / r["bytes"])
    headers = sum(jpeg.frame_info(s).scan_start + 2 for s in streams)  # through SOS, and EOI
    longest = max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size))
    assert abs(regions["headers"]["bytes"] - headers) <= len(streams) * longest


def test_bits_per_byte_of_a_random_model_equals_train_definition(checkpoint_dir):
    from nanocodec.checkpoint import load_for_inference
    from nanocodec.eval import bits_per_byte

    bundle = load_for_inference(checkpoint_dir / "ckpt")
    path = checkpoint_dir / "data"
    result = bits_per_byte(bundle.model, bundle.tokenizer, path, "jpeg", context=48, batch_size=4, progress=False)
    nats = 0.0
    with torch.no_grad():
        for x, y in data.val_batches(path, 48, 4):
            logits, loss = bundle.model(x, y)
            nats += loss.item() * (y != data.IGNORE).sum().item()
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / data.codec_bytes(path, "val"), rel=1e-5)


def test_eval_cli_writes_report_and_gives_no_fid_without_weights(checkpoint_dir, capsys):
    from nanocodec import eval as evaluation

    out = checkpoint_dir / "eval_no_fid"
    report = evaluation.main([str(checkpoint_dir / "ckpt"), "--decode_samples=2", "--decode_ratio=0.5",
                              f"--out={out}", "--metrics=bpb,decode,fid", "--device=cpu"])
    assert "skipped" in report["fid"] and "ratios" not in report["fid"]
    assert report["decode_rate_constrained"]["valid"] == report["decode_rate_constrained"]["samples"] == 2
    assert 0 <= report["decode_rate"]["valid"] <= 2
    saved = json.loads((out / "report.json").read_text())
    assert saved["bits_per_byte"]["bits_per_byte"] == pytest.approx(report["bits_per_byte"]["bits_per_byte"])
    table = (out / "report.md").read_text()
    assert "| prompted FID | not computed: no --inception_weights" in table and "restart" in table
    with pytest.raises(evaluation.EvalError, match="--metrics"):
        evaluation.main([str(checkpoint_dir / "ckpt"), "--metrics=bpb,fun"])


def test_eval_fid_protocol_with_weights(checkpoint_dir, inception_file):
    from nanocodec import eval as evaluation

    out = checkpoint_dir / "eval_fid"
    report = evaluation.main([str(checkpoint_dir / "ckpt"), "--metrics=fid", "--fid_images=2", "--ratios=0.25,0.5",
                              "--seeds=2", f"--inception_weights={inception_file}", f"--out={out}", "--max_new_tokens=20"])
    fid = report["fid"]
    assert fid["images"] == 2 and set(fid["ratios"]) == {"0.25", "0.5"}
    assert "round trip" in fid["references"]
    for r in fid["ratios"].values():
        values = [run["fid"] for run in r["runs"]]
        assert len(values) == 2 and all(v >= 0 for v in values)
        assert r["mean"] == pytest.approx(np.mean(values)) and r["std"] == pytest.approx(np.std(values, ddof=1))
    assert "± " in (out / "report.md").read_text()


# --- sample.py ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_script():
    spec = importlib.util.spec_from_file_location("sample_script", Path(__file__).parents[1] / "sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def random_checkpoint(path: Path, data_dir: Path, context: int) -> Path:
    """A randomly initialised tiny model of `context` tokens on the tokenizer of `data_dir`."""
    from nanocodec import checkpoint
    from nanocodec.bpe import Tokenizer
    from nanocodec.model import Llama, ModelConfig

    tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                         max_seq_len=context)
    torch.manual_seed(0)
    checkpoint.save(path, Llama(config).state_dict(), {}, step=0, model_config=asdict(config), train_config={},
                    data_dir=data_dir)
    return path


def one_line_error(script, argv: list[str]) -> str:
    """The message the entry point exits with (what the user sees on stderr), checked to be one line."""
    with pytest.raises(SystemExit) as stop:
        script.cli(argv)
    message = stop.value.code
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message, message
    return message


def prompt_tokens(checkpoint_dir: Path, prefix: bytes) -> int:
    from nanocodec.bpe import Tokenizer

    return len(Tokenizer.load(checkpoint_dir / "data" / "tokenizer.json").encode(prefix, bos=True))


def test_sample_py_prompted_constrained_writes_valid_jpegs_and_a_grid(checkpoint_dir, sample_script, capsys):
    from nanocodec import huffman

    prompt = checkpoint_dir / "images" / "im03.png"
    out = checkpoint_dir / "samples"
    threads = torch.get_num_threads()
    try:
        summary = sample_script.main([f"--ckpt={checkpoint_dir / 'ckpt'}", f"--prompt={prompt}", "--ratio=0.5",
                                      "--num_samples=2", f"--out={out}", "--constrain", "--device=cpu", "--threads=1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert summary["samples"] == summary["valid"] == 2 and summary["repaired"] == 0
    assert "2 samples, 2 valid, 0 repaired;" in capsys.readouterr().out
    given = jpeg.prompt(jpeg.encode(prompt, size=SIZE), 0.5)
    for k in range(2):
        written = (out / f"im03_{k}.jpg").read_bytes()
        assert huffman.validate(written).ok and Image.open(out / f"im03_{k}.jpg").size == (SIZE, SIZE)
        assert b"\xff\xc4" in written  # tables restored: any viewer opens it
    grid = Image.open(out / "im03_grid.png")
    assert grid.size == (4 * SIZE + 3 * 2, SIZE)  # prompt | 2 samples | original
    tile = np.asarray(grid.convert("RGB"))[:, :SIZE]
    assert np.array_equal(tile, np.asarray(jpeg.decode(given, repair=True)))
    assert (tile[SIZE // 2 + 1 :] == 128).all()  # the missing half is flat gray


def test_sample_py_unconstrained_repairs_and_counts(checkpoint_dir, sample_script, capsys):
    out = checkpoint_dir / "samples_raw"
    summary = sample_script.main([f"--ckpt={checkpoint_dir / 'ckpt'}", f"--prompt={checkpoint_dir / 'images'}",
                                  "--ratio=0.75", "--num_samples=1", f"--out={out}", "--max_new_tokens=40",
                                  "--seed=3"])
    assert summary["samples"] == 16 and summary["valid"] + summary["repaired"] + summary["unreadable"] == 16
    assert summary["repaired"] > 0  # 40 random tokens rarely finish a 32x32 image
    assert summary["cut_off"]["context"] == 0 and summary["cut_off"]["max_new_tokens"] > 0
    assert (f"stopped before the stream was complete: {summary['cut_off']['max_new_tokens']} at --max_new_tokens=40"
            in capsys.readouterr().out)
    assert len(list(out.glob("*_grid.png"))) == 16 and len(list(out.glob("*.jpg"))) == 16


def test_sample_py_writes_beside_the_checkpoint_by_default(checkpoint_dir, sample_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default of "samples" would land
    summary = sample_script.main([f"--ckpt={checkpoint_dir / 'ckpt'}", "--num_samples=1", "--max_new_tokens=4"])
    assert summary["samples"] == 1 and (checkpoint_dir / "ckpt" / "samples" / "sample_grid.png").exists()
    assert list(tmp_path.iterdir()) == []


def test_sample_py_clear_errors(checkpoint_dir, sample_script, tmp_path):
    import shutil

    ckpt = checkpoint_dir / "ckpt"
    assert "--ratio must be in" in one_line_error(sample_script, [f"--ckpt={ckpt}", "--prompt=x.png", "--ratio=1.5"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "notes.png" in one_line_error(sample_script, [f"--ckpt={ckpt}", f"--prompt={text}", f"--out={tmp_path / 'o'}"])
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    message = one_line_error(sample_script, [f"--ckpt={ckpt}", f"--prompt={video}", f"--out={tmp_path / 'o'}"])
    assert "clip.mp4: this checkpoint models JPEG images; the prompt is a video" in message
    if not torch.cuda.is_available():
        assert "--device=cuda: this machine has no usable CUDA GPU" in one_line_error(
            sample_script, [f"--ckpt={ckpt}", "--device=cuda"])
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "tokenizer.json").unlink()
    assert "tokenizer.json: missing" in one_line_error(sample_script, [f"--ckpt={broken}"])
    config = json.loads((ckpt / "config.json").read_text())
    shutil.copy(ckpt / "tokenizer.json", broken / "tokenizer.json")
    (broken / "config.json").write_text(json.dumps({**config, "version": 99}))
    assert "unknown checkpoint version 99" in one_line_error(sample_script, [f"--ckpt={broken}"])
    assert not (tmp_path / "o").exists()  # nothing written for a request that fails


def test_image_prompts_longer_than_the_context(checkpoint_dir, sample_script, tmp_path, capsys):
    """A single prompt that fills the context is an error; in a folder it is skipped with its reason."""
    images = checkpoint_dir / "images"
    tokens = {p.name: prompt_tokens(checkpoint_dir, jpeg.prompt(jpeg.encode(p, size=SIZE), 1.0))
              for p in sorted(images.glob("*.png"))}
    short, long = min(tokens, key=tokens.get), max(tokens, key=tokens.get)
    assert tokens[short] < tokens[long]
    ckpt = random_checkpoint(tmp_path / "short_context", checkpoint_dir / "data", tokens[long])  # long fills it
    message = one_line_error(sample_script, [f"--ckpt={ckpt}", f"--prompt={images / long}", "--ratio=1"])
    assert f"{long}: at --ratio=1 the prompt is {tokens[long]} tokens, which fill the model's context of {tokens[long]}" in message
    assert "smaller --ratio" in message
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in (short, long):
        (folder / name).write_bytes((images / name).read_bytes())
    summary = sample_script.main([f"--ckpt={ckpt}", f"--prompt={folder}", "--ratio=1", "--num_samples=1",
                                  f"--out={tmp_path / 'out'}"])
    assert summary["prompts"] == 1 and summary["skipped"] == 1 and summary["samples"] == 1
    captured = capsys.readouterr()
    assert f"skipped --prompt {folder / long}: at --ratio=1" in captured.err
    assert "1 prompts skipped" in captured.out


def test_constrained_samples_stopped_by_the_context_are_counted(checkpoint_dir, sample_script, tmp_path, capsys):
    prompt = checkpoint_dir / "images" / "im05.png"
    given = prompt_tokens(checkpoint_dir, jpeg.prompt(jpeg.encode(prompt, size=SIZE), 0.25))
    ckpt = random_checkpoint(tmp_path / "room_for_one", checkpoint_dir / "data", given + 1)  # one new token
    summary = sample_script.main([f"--ckpt={ckpt}", f"--prompt={prompt}", "--ratio=0.25", "--num_samples=2",
                                  "--constrain", f"--out={tmp_path / 'out'}"])
    assert summary["valid"] == 0 and summary["repaired"] == 2 and summary["cut_off"] == {"context": 2, "max_new_tokens": 0}
    assert (f"2 repaired (2 stopped before the stream was complete: 2 at the model's context of {given + 1} tokens)"
            in capsys.readouterr().out)


@pytest.fixture(scope="module")
def video_setup(tmp_path_factory):
    """Three 64x36 clips of a moving bar, prepared, and a random checkpoint of 2048 tokens on them."""
    import av

    from nanocodec import prepare

    root = tmp_path_factory.mktemp("video")
    videos = root / "videos"
    videos.mkdir()
    for v in range(3):
        with av.open(str(videos / f"clip{v}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=6)
            stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv420p"
            for i in range(12):
                frame = np.zeros((36, 64, 3), np.uint8)
                frame[:, (5 * i + 7 * v) % 56 :][:, :8] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    prepare.prepare("avc", str(videos), root / "data", size=(64, 36), merges=20, val_fraction=0.3, workers=1)
    random_checkpoint(root / "ckpt", root / "data", 2048)
    return root


def test_sample_py_continues_a_video_from_its_first_frames(video_setup, sample_script, tmp_path, capsys):
    from nanocodec import avc

    videos = video_setup / "videos"
    out = tmp_path / "out"
    args = [f"--ckpt={video_setup / 'ckpt'}", f"--prompt={videos / 'clip1.mp4'}", "--frames=3", "--num_samples=2",
            f"--out={out}", "--max_new_tokens=60"]
    summary = sample_script.main(args)
    assert summary["samples"] == 2 and 0 <= summary["valid"] <= 2
    line = capsys.readouterr().out
    assert f"2 samples: {summary['valid']} decode without error, {2 - summary['valid'] - summary['unreadable']} decode with errors concealed" in line
    prefix = avc.prompt(avc.encode(videos / "clip1.mp4", size=(64, 36)), 3)
    for k in range(2):
        assert (out / f"clip1_{k}.h264").read_bytes().startswith(prefix)
        assert len(avc.decode((out / f"clip1_{k}.h264").read_bytes())) >= 3
        assert (out / f"clip1_{k}.png").exists()
    assert Image.open(out / "clip1_original.png").size[0] > 64
    pictures = len(avc.frame_offsets(avc.encode(videos / "clip1.mp4", size=(64, 36))))
    message = one_line_error(sample_script, args + ["--frames=99", f"--out={tmp_path / 'none'}"])
    assert f"--frames=99, but the video gives only {pictures} frames" in message
    assert not (tmp_path / "none").exists()  # nothing written for a request that fails


def test_sample_py_constrained_video_continuations_decode_and_add_frames(video_setup, sample_script, tmp_path, capsys):
    from nanocodec import avc

    out = tmp_path / "out"
    summary = sample_script.main([f"--ckpt={video_setup / 'ckpt'}", f"--prompt={video_setup / 'videos' / 'clip1.mp4'}",
                                  "--frames=2", "--num_samples=2", "--constrain", "--max_new_tokens=1000", f"--out={out}"])
    assert summary["valid"] == summary["samples"] == 2
    assert "2 samples: 2 decode without error" in capsys.readouterr().out
    for k in range(2):
        report = avc.validate((out / f"clip1_{k}.h264").read_bytes())
        assert report.ok and report.frames > 2


def test_constrained_video_rows_out_of_tokens_are_cut_back_and_said_to_add_nothing(video_setup, sample_script, tmp_path,
                                                                                   capsys):
    from nanocodec import avc

    out = tmp_path / "out"
    clip = video_setup / "videos" / "clip1.mp4"
    summary = sample_script.main([f"--ckpt={video_setup / 'ckpt'}", f"--prompt={clip}", "--frames=2", "--num_samples=2",
                                  "--constrain", "--max_new_tokens=3", f"--out={out}"])  # too few for a picture
    prompt = avc.prompt(avc.encode(clip, size=(64, 36)), 2)
    assert summary["valid"] == summary["cut_back"] == summary["nothing_added"] == 2
    printed = capsys.readouterr().out
    assert "2 cut back to their last complete picture" in printed and "2 of them with no picture beyond the prompt" in printed
    for k in range(2):
        assert (out / f"clip1_{k}.h264").read_bytes() == prompt


def test_video_checkpoint_mistakes_are_one_line(video_setup, sample_script, checkpoint_dir, tmp_path):
    from nanocodec import avc
    from nanocodec.bpe import Tokenizer

    ckpt = video_setup / "ckpt"
    image = checkpoint_dir / "images" / "im00.png"
    message = one_line_error(sample_script, [f"--ckpt={ckpt}", f"--prompt={image}", "--frames=2"])
    assert "im00.png: this checkpoint models H.264 video; the prompt is an image" in message
    clip = video_setup / "videos" / "clip2.mp4"
    stream = avc.encode(clip, size=(64, 36))
    tokenizer = Tokenizer.load(video_setup / "data" / "tokenizer.json")
    tokens = [len(tokenizer.encode(avc.prompt(stream, f), bos=True)) for f in range(5)]
    short = random_checkpoint(tmp_path / "short", video_setup / "data", tokens[3])  # 3 frames fill it
    message = one_line_error(sample_script, [f"--ckpt={short}", f"--prompt={clip}", "--frames=3"])
    assert f"clip2.mp4: its first 3 frames are {tokens[3]} tokens, which fill the model's context" in message
    assert "use --frames=1 or fewer" in message  # 2 frames (the prompt and one more) fit, 3 do not


def test_eval_prompts_longer_than_the_context_are_one_line(checkpoint_dir, tmp_path):
    from nanocodec import eval as evaluation

    ckpt = random_checkpoint(tmp_path / "short", checkpoint_dir / "data", 8)  # no val prompt fits in 8 tokens
    message = one_line_error(evaluation, [str(ckpt), "--metrics=decode", "--decode_ratio=0.5", "--decode_samples=2"])
    assert "--decode_ratio=0.5: the longest val prompt is" in message and "context of 8 tokens" in message

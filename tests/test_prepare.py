"""Data preparation end to end on small folders made here: good files of many formats, every kind of
bad file, exact token accounting, split stability, resuming a killed run, and the demo source."""
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from nanocodec import avc, bpe, demo, jpeg
from nanocodec.prepare import PrepareError, is_val, main, prepare

SMALL = dict(size=16, merges=24, tokenizer_docs=8, val_fraction=0.3, seed=0)
JPEG_CODEC = dict(size=16, quality=25)


def picture(seed: int, size=(40, 32)) -> Image.Image:
    """A smooth random scene with an edge, so that JPEG has real work to do."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) + rng.uniform(-3, 3, 3) * (xx[..., None] + yy[..., None])
    base[: h // 2, : w // 3] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image: what a decompression bomb looks like to Pillow."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def tiff_two_samples() -> bytes:
    """A valid little TIFF of 2 samples x 16 bits per pixel, a pixel layout Pillow has no mode for."""
    w = h = 4
    pixels = bytes(w * h * 4)
    tags = [(256, w), (257, h), (258, 16), (259, 1), (262, 1), (273, 0), (277, 2), (278, h), (279, len(pixels))]
    start = 8 + 2 + 12 * len(tags) + 4
    ifd = b"".join(struct.pack("<HHII", tag, 4, 1, start if tag == 273 else value) for tag, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + ifd + b"\0" * 4 + pixels


def good_images(root: Path) -> list[str]:
    """Readable images in many formats and modes, in subfolders; returns their relative paths."""
    files = {
        "a/photo_0.jpg": encoded(picture(0), "JPEG", quality=90),
        "a/photo_1.jpg": encoded(picture(1), "JPEG", quality=90),
        "a/scene_0.png": encoded(picture(2), "PNG"),
        "a/scene_1.png": encoded(picture(3, (33, 47)), "PNG"),
        "a/scene_2.PNG": encoded(picture(4), "PNG"),
        "a/deeper/wide.png": encoded(picture(5, (90, 20)), "PNG"),
        "b/palette.gif": encoded(picture(6).convert("P"), "GIF"),
        "b/alpha.png": encoded(picture(7).convert("RGBA"), "PNG"),
        "b/deep16.png": encoded(picture(8).convert("L").point(lambda v: v * 257, "I").convert("I;16"), "PNG"),
        "b/cmyk.tif": encoded(picture(9).convert("CMYK"), "TIFF"),
        "b/gray.webp": encoded(picture(10).convert("L"), "WEBP"),
        "b/bitmap.bmp": encoded(picture(11), "BMP"),
        "c/photo_2.jpeg": encoded(picture(12), "JPEG"),
        "c/photo_3.jpg": encoded(picture(13), "JPEG"),
        "c/photo_4.jpg": encoded(picture(14), "JPEG"),
        "c/photo_5.jpg": encoded(picture(15), "JPEG"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return sorted(files)


BAD = {
    "bad/empty.jpg": (b"", "empty file"),
    "bad/truncated.png": (encoded(picture(20), "PNG")[:400], "truncated"),
    "bad/notes.jpg": (b"shopping list: milk, eggs\n" * 4, "not an image"),
    "bad/bomb.png": (png_claiming(10000, 10000), "decompression bomb"),  # over the limit: a warning in Pillow
    "bad/huge.png": (png_claiming(40000, 40000), "decompression bomb"),  # over twice the limit: an error
    "bad/twosamples.tif": (tiff_two_samples(), "unsupported mode"),
}


def bad_images(root: Path) -> None:
    for name, (data, _) in BAD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "README.txt").write_text("not part of the data set")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("images")
    good = good_images(root)
    bad_images(root)
    return root, good


@pytest.fixture(scope="module")
def prepared(image_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "data"
    return out, prepare("jpeg", str(image_folder[0]), out, workers=1, shard_files=4, **SMALL)


def shard_docs(out: Path, split: str) -> list[np.ndarray]:
    """Every document (with <bos>/<eos>) of a split, read straight from the .bin/.idx files."""
    docs = []
    for bin_file in sorted(out.glob(f"{split}_*.bin")):
        tokens = np.fromfile(bin_file, dtype="<u2")
        offsets = np.fromfile(bin_file.with_suffix(".idx"), dtype="<i8")
        assert offsets[0] == 0 and offsets[-1] == len(tokens)
        docs += [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return docs


def test_bad_files_are_skipped_counted_and_listed(prepared, capsys):
    out, manifest = prepared
    reasons = {e["path"]: e["reason"] for e in manifest["skipped"]}
    assert {path: r.split(":")[0] for path, r in reasons.items()} == {k: v[1] for k, v in BAD.items()}
    assert all(len(r.split(": ", 1)[1]) > 5 for r in reasons.values())  # each says what went wrong
    assert "unknown pixel mode" in reasons["bad/twosamples.tif"]
    assert manifest["skipped_by_reason"] == {"decompression bomb": 2, "empty file": 1, "truncated": 1,
                                             "not an image": 1, "unsupported mode": 1}
    assert manifest["ignored"] == {"files with extension .txt": 1}
    splits = manifest["splits"]
    assert splits["train"]["files"] + splits["val"]["files"] == 16 + len(BAD)
    assert splits["train"]["documents"] + splits["val"]["documents"] == 16


def test_documents_are_the_codec_bytes_of_the_files_of_their_split(prepared, image_folder):
    out, manifest = prepared
    root, good = image_folder
    tok = bpe.Tokenizer.load(out / "tokenizer.json")
    assert manifest["tokenizer_sha256"] == tok.sha256
    for split in ("train", "val"):
        docs = shard_docs(out, split)
        mine = [g for g in good if is_val(g, SMALL["val_fraction"]) == (split == "val")]
        expected = [jpeg.encode(root / g, **JPEG_CODEC) for g in mine]
        assert len(docs) == len(expected) == manifest["splits"][split]["documents"] > 0
        for doc, codec in zip(docs, expected):
            assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id
            assert not np.isin(doc[1:-1], [tok.bos_id, tok.eos_id, tok.pad_id]).any()
            assert tok.decode(doc) == codec
        assert sum(len(d) - 2 for d in docs) + 2 * len(docs) == sum(
            f.stat().st_size // 2 for f in out.glob(f"{split}_*.bin")) == manifest["splits"][split]["tokens"]
        assert manifest["splits"][split]["codec_bytes"] == sum(map(len, expected))


def test_manifest_records_settings_and_versions(prepared):
    _, manifest = prepared
    assert manifest["kind"] == "jpeg"
    assert manifest["codec"] == {"size": 16, "quality": 25, "subsampling": "4:2:0", "restart_blocks": 1}
    assert manifest["tokenizer"]["merges"] <= SMALL["merges"]
    assert {"pillow", "libjpeg", "pyav", "ffmpeg"} <= manifest["versions"].keys()
    assert all(manifest["versions"].values())


def test_split_is_stable_when_files_are_added(prepared, image_folder, tmp_path):
    out, _ = prepared
    root = tmp_path / "more"
    shutil.copytree(image_folder[0], root)
    for i in range(6):
        (root / f"new/extra_{i}.png").parent.mkdir(exist_ok=True)
        (root / f"new/extra_{i}.png").write_bytes(encoded(picture(100 + i), "PNG"))
    bigger = tmp_path / "bigger"
    prepare("jpeg", str(root), bigger, workers=1, shard_files=4, **SMALL)

    def codec_streams(folder: Path, split: str) -> set[bytes]:
        tok = bpe.Tokenizer.load(folder / "tokenizer.json")
        return {tok.decode(d) for d in shard_docs(folder, split)}

    for split in ("train", "val"):
        assert codec_streams(out, split) <= codec_streams(bigger, split)


def test_rerun_is_a_no_op_and_other_settings_are_refused(prepared, image_folder, tmp_path):
    out, manifest = prepared
    stamps = {f.name: f.stat().st_mtime_ns for f in out.glob("*_*.bin")}
    again = prepare("jpeg", str(image_folder[0]), out, workers=1, shard_files=4, **SMALL)
    assert again == manifest
    assert stamps == {f.name: f.stat().st_mtime_ns for f in out.glob("*_*.bin")}
    with pytest.raises(PrepareError, match="quality"):
        prepare("jpeg", str(image_folder[0]), out, workers=1, shard_files=4, quality=50,
                **{k: v for k, v in SMALL.items() if k != "quality"})
    (tmp_path / "keep.txt").write_text("someone's notes")
    with pytest.raises(PrepareError, match="not empty"):
        prepare("jpeg", str(image_folder[0]), tmp_path, workers=1, **SMALL)


def test_bad_settings_fail_once_up_front(image_folder, tmp_path):
    with pytest.raises(PrepareError, match="multiple of 16"):
        prepare("jpeg", str(image_folder[0]), tmp_path / "a", workers=1, **dict(SMALL, size=20))
    with pytest.raises(PrepareError, match="qp"):
        prepare("avc", "demo", tmp_path / "b", qp=60, workers=1)
    with pytest.raises(PrepareError, match="val-fraction"):
        prepare("jpeg", "demo", tmp_path / "c", **dict(SMALL, val_fraction=1.0))
    assert not any(tmp_path.iterdir())


KILL_AFTER_TWO_SHARDS = """
import json, os, signal, sys
import nanocodec.prepare as p
write, done = p._write_shard, []
def write_then_die(*args):
    done.append(write(*args))
    if len(done) == 2:
        os.killpg(0, signal.SIGKILL)  # the whole group: this process and every pool worker
    return done[-1]
p._write_shard = write_then_die
p.prepare(*json.loads(sys.argv[1]), **json.loads(sys.argv[2]))
"""


def test_killed_run_resumes_to_the_same_bytes(image_folder, tmp_path):
    root = str(image_folder[0])
    options = dict(workers=2, shard_files=3, **SMALL)
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_SHARDS, json.dumps(["jpeg", root, str(killed)]),
                          json.dumps(options)], start_new_session=True, capture_output=True, timeout=300)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    assert not (killed / "manifest.json").exists()
    finished = sorted(p.stem for p in (killed / ".prepare").glob("*_0*.json"))
    assert finished == ["train_0000", "train_0001"]
    stamps = {n: (killed / f"{n}.bin").stat() for n in finished}
    (killed / "train_0002.bin").write_bytes(b"torn write")  # as if killed while writing the next shard
    (killed / "train_0003.bin.123.tmp").write_bytes(b"leftover")

    prepare("jpeg", root, killed, **options)
    for n, st in stamps.items():  # finished shards were kept, not redone
        now = (killed / f"{n}.bin").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    straight = tmp_path / "straight"
    prepare("jpeg", root, straight, **dict(options, workers=1))

    def contents(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert contents(killed) == contents(straight)


def test_symlinked_folders_are_followed_once_and_unreadable_folders_listed(tmp_path, monkeypatch, capsys):
    import os

    from nanocodec import prepare as module

    outside, root = tmp_path / "elsewhere", tmp_path / "root"
    for name, seed in (("elsewhere/p0.png", 0), ("elsewhere/p1.png", 1), ("root/a/p2.png", 2), ("root/locked/p3.png", 3)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        picture(seed).save(tmp_path / name)
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a folder of images linked in
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # back to the top: walked once
    (root / "again").symlink_to(outside, target_is_directory=True)  # a second link to one folder
    scandir = os.scandir

    def refuse_locked(path):  # the tests run as root, where chmod 000 does not stop reading
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(module.os, "scandir", refuse_locked)
    manifest = prepare("jpeg", str(root), tmp_path / "out", workers=1, **SMALL)
    assert sum(s["documents"] for s in manifest["splits"].values()) == 3  # a/p2 and the two linked once
    assert {"path": "locked/", "reason": "unreadable folder: Permission denied"} in manifest["skipped"]
    assert manifest["skipped_by_reason"] == {"unreadable folder": 1}
    assert manifest["ignored"] == {"folders reached again through a symlink (walked once)": 2}
    assert "skipped 1 (1 unreadable folder;" in capsys.readouterr().err
    with pytest.raises(PrepareError, match="found no images; could not read ./ .unreadable folder: Permission denied"):
        prepare("jpeg", str(root / "locked"), tmp_path / "none", workers=1, **SMALL)


def test_devices_and_fifos_are_not_regular_files(tmp_path):
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    picture(0).save(folder / "good.png")
    picture(1).save(folder / "other.png")
    os.mkfifo(folder / "pipe.jpg")  # opening it for reading would wait for a writer forever
    listing = tmp_path / "list.txt"
    listing.write_text("photos/good.png\nphotos/other.png\n/dev/zero\n/dev/urandom\nphotos/pipe.jpg\n")
    for source in (folder, listing):  # all to train: the tokenizer needs a readable train file
        manifest = prepare("jpeg", str(source), tmp_path / f"out_{source.stem}", workers=1,
                           **dict(SMALL, val_fraction=0.0))
        reasons = {Path(e["path"]).name: e["reason"] for e in manifest["skipped"]}
        assert reasons["pipe.jpg"] == "not a regular file: a FIFO"
        assert sum(s["documents"] for s in manifest["splits"].values()) == 2
    assert reasons["zero"] == reasons["urandom"] == "not a regular file: a device"


def test_a_kill_before_run_json_does_not_block_the_same_command(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".prepare").mkdir(parents=True)  # killed between creating .prepare/ and writing run.json
    (out / ".prepare" / "run.json.123.abcd.tmp").write_text('{"format_')
    manifest = prepare("jpeg", str(image_folder[0]), out, workers=1, **dict(SMALL, val_fraction=0.0))
    assert manifest["splits"]["val"]["documents"] == 0 and not list(out.rglob("*.tmp"))
    assert "warning: the val split is empty" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / ".prepare").mkdir(parents=True)
    (foreign / ".prepare" / "notes.json").write_text("{}")  # not ours to reuse
    with pytest.raises(PrepareError, match="not empty"):
        prepare("jpeg", str(image_folder[0]), foreign, workers=1, **SMALL)


def test_list_source_limit_and_given_tokenizer(prepared, image_folder, tmp_path):
    root, good = image_folder
    listing = root / "subset.txt"
    listing.write_text("# a subset\n" + "\n".join(good[:10]) + f"\n{good[0]}\n\nmissing/none.png\n")
    out, manifest = prepared
    limited = prepare("jpeg", str(listing), tmp_path / "a", workers=1, limit=6, tokenizer=out / "tokenizer.json",
                      **{k: v for k, v in SMALL.items() if k not in ("merges",)})
    assert limited["tokenizer_sha256"] == manifest["tokenizer_sha256"]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert sum(s["files"] for s in limited["splits"].values()) == 6
    assert limited["ignored"] == {"repeated lines": 1}
    again = prepare("jpeg", str(listing), tmp_path / "b", workers=1, limit=6, tokenizer=out / "tokenizer.json",
                    **{k: v for k, v in SMALL.items() if k not in ("merges",)})
    assert again["splits"] == limited["splits"] and again["skipped"] == limited["skipped"]
    everything = prepare("jpeg", str(listing), tmp_path / "c", workers=1, tokenizer=out / "tokenizer.json",
                         **{k: v for k, v in SMALL.items() if k not in ("merges",)})
    assert everything["skipped"] == [{"path": "missing/none.png", "reason": "missing file: no such file"}]


def write_video(path: Path, frames: int = 9, size=(64, 48), rate: int = 6) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[10:30, 4 * i:4 * i + 16] = (200, 60, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def test_video_folder(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(3):
        write_video(root / f"clip_{i}.mp4", frames=6 + 3 * i)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 10)
    write_audio_only(root / "sound.mkv")
    (root / "cut.mp4").write_bytes((root / "clip_2.mp4").read_bytes()[:300])
    out = tmp_path / "data"
    manifest = prepare("avc", str(root), out, size=(64, 36), merges=16, tokenizer_docs=3, val_fraction=0.0, workers=1)
    reasons = {e["path"]: e["reason"].split(":")[0] for e in manifest["skipped"]}
    assert reasons == {"empty.mp4": "empty file", "text.mp4": "unreadable video", "sound.mkv": "unreadable video",
                       "cut.mp4": "unreadable video"}
    tok = bpe.Tokenizer.load(out / "tokenizer.json")
    docs = [tok.decode(d) for d in shard_docs(out, "train")]
    assert docs == [avc.encode(str(root / f"clip_{i}.mp4"), size=(64, 36)) for i in range(3)]
    assert manifest["codec"] == {"seconds": 5, "fps": 3, "size": [64, 36], "qp": 37, "keep_sei": False}


def test_demo_plans_and_pictures_are_fixed_by_the_seed():
    crops = demo.image_crops(12, seed=4)
    assert crops == demo.image_crops(12, seed=4) and crops != demo.image_crops(12, seed=5)
    assert len({c.name for c in crops}) == 12
    for c in crops:
        left, top, right, bottom = c.box
        assert right - left == bottom - top > 0 and right <= c.clip.width and bottom <= c.clip.height
    every = [np.asarray(im) for im in demo.render_images(crops, 24)]
    assert [a.shape for a in every] == [(24, 24, 3)] * 12 and min(a.std() for a in every) > 1
    # a subset (what a resumed run renders) gives the same pictures as the whole plan
    subset = [np.asarray(im) for im in demo.render_images(crops[1::3], 24)]
    assert len(subset) == 4 and all(np.array_equal(a, b) for a, b in zip(subset, every[1::3]))


def test_demo_videos_are_windows_at_fps():
    windows = demo.video_windows(3, seed=1, seconds=5, aspect=16 / 9)
    assert windows == demo.video_windows(3, seed=1, seconds=5, aspect=16 / 9)
    videos = list(demo.render_videos(windows, (32, 18), seconds=5, fps=3))
    for w, frames in zip(windows, videos):
        left, top, right, bottom = w.box
        assert abs((right - left) / (bottom - top) - 16 / 9) < 0.05
        assert len(frames) == min(15, sum(1 for k in range(15) if w.start + k / 3 < w.clip.duration))
        assert all(f.shape == (18, 32, 3) and f.dtype == np.uint8 for f in frames)
        assert any(not np.array_equal(frames[0], f) for f in frames[1:])  # the footage moves


def test_demo_source_prepares(tmp_path):
    manifest = prepare("avc", "demo", tmp_path / "v", limit=2, merges=8, tokenizer_docs=2, val_fraction=0.0, workers=1)
    assert manifest["splits"]["train"]["documents"] == 2 and manifest["codec"]["size"] == [64, 36]
    assert manifest["source"] == "demo" and not manifest["skipped"]


def test_cli(image_folder, tmp_path, capsys):
    main(["--kind", "jpeg", "--source", str(image_folder[0]), "--out", str(tmp_path / "cli"), "--size", "16",
          "--merges", "8", "--tokenizer-docs", "4", "--workers", "1"])
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["codec"]["size"] == 16
    assert f"kept 16 of {16 + len(BAD)} files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--kind", "jpeg", "--source", "demo", "--out", str(tmp_path / "x"), "--size", "64x36"])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["--kind", "jpeg", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])

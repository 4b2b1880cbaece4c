"""nanocodec.huffman against libjpeg-turbo: every stream `djpeg -strict` rejects, we reject too.

Marked `oracle` (excluded from the default run; `pytest -m oracle`), skipped where djpeg is missing
(Debian: libjpeg-turbo-progs). Real encoded images get random bit flips, byte insertions and
deletions, truncations, renumbered or dropped RST markers and header edits. A stream we reject and
djpeg accepts must break one of the T.81 rules in STRICTER, which libjpeg does not enforce.
"""
import io
import random
import re
import shutil
import subprocess

import pytest
from PIL import Image

from nanocodec import jpeg
from nanocodec.huffman import validate

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(shutil.which("djpeg") is None, reason="needs djpeg (libjpeg-turbo-progs)"),
]

# Our error message -> the rule it enforces that libjpeg-turbo lets pass.
STRICTER = {
    "padding bits .* are not all 1": "F.1.2.3: the last byte of a segment is padded with 1-bits",
    "entropy-coded data continues after MCU": "B.2.1/F.1.2.3: a restart interval ends right after "
                                              "its last MCU (libjpeg drops prefetched bytes)",
    "trailing bytes after EOI": "B.2.1: EOI ends the stream (djpeg stops reading at EOI)",
    "expected EOI after the last MCU": "B.2.1: after the last scan only EOI may follow (no "
                                       "RST, tables or misc segments)",
    "unexpected (RST.|TEM) before the scan": "B.1.1.3: RST markers exist only inside scans, TEM "
                                             "only in arithmetic coding",
    "this process allows 0-1": "B.2.4.2: baseline (SOF0) uses Huffman tables 0-1 only",
    "passes coefficient 63": "F.2.2.2: run lengths stay within the 63 AC coefficients",
    "leaves no room for the coefficient": "F.1.2.2.1: a ZRL is followed by a nonzero coefficient",
    "AC coefficient category .* exceeds 10": "F.1.2.2: 8-bit AC magnitude categories are 1-10",
    "AC symbol 0x.. is undefined": "F.1.2.2.1: in sequential mode only EOB and ZRL have size 0",
    "DC category .*, above 11": "F.1.2.1: 8-bit DC difference categories are 0-11",
    "has a zero entry": "B.2.4.1: quantization table entries are 1-255",
    "found FF FF before the MCU is complete": "B.1.1.2: 0xFF fill bytes only precede markers",
}


# Streams outside the validator's scope (progressive, 12-bit, multi-scan...) are reported as
# "unsupported: ..."; a djpeg that reads them may accept what a header edit turned into one.
OUT_OF_SCOPE = "^unsupported: "


def source_images() -> list[Image.Image]:
    mandel = Image.effect_mandelbrot((96, 72), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    noise = Image.merge("RGB", [Image.effect_noise((72, 56), s) for s in (20, 60, 90)])
    ramp = Image.merge("RGB", [Image.linear_gradient("L").resize((80, 80)),
                               Image.radial_gradient("L").resize((80, 80)),
                               Image.linear_gradient("L").rotate(90).resize((80, 80))])
    return [mandel, noise, ramp]


def streams() -> list[bytes]:
    out = []
    for im in source_images():
        for sub in ("4:2:0", "4:4:4", "4:2:2"):
            for restart in (1, 2, 0):
                out.append(jpeg.restore(jpeg.save_abbreviated(im.resize((40, 24)), 25, sub,
                                                              restart), 25, sub))
        buf = io.BytesIO()
        im.convert("L").resize((37, 21)).save(buf, "JPEG", quality=40, restart_marker_blocks=3)
        out.append(buf.getvalue())
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    s = bytearray(data)
    scan = s.find(b"\xff\xda")
    i = rng.randrange(scan if rng.random() < 0.6 else 0, len(s))
    rsts = [j for j in range(len(s) - 1) if s[j] == 0xFF and 0xD0 <= s[j + 1] <= 0xD7]
    kind = rng.randrange(10)
    if kind == 0:
        s[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        s.insert(i, rng.randrange(256))
    elif kind == 2:
        del s[i]
    elif kind == 3:
        del s[i:]
    elif kind == 4 and rsts:
        s[rng.choice(rsts) + 1] = 0xD0 + rng.randrange(8)
    elif kind == 5 and rsts:
        j = rng.choice(rsts)
        del s[j:j + 2]
    elif kind == 6:
        s[i:i] = rng.choice([b"\xff\xfe\x00\x04ab", b"\xff\xff", b"\xff\x00", b"\xff\xd0",
                             b"\xff\xd9", b"\xff\xdd\x00\x04\x00\x01"])
    elif kind == 7:
        j = rng.randrange(scan + 14)
        s[j] = rng.choice([0, 1, 2, 3, 8, 12, 15, 16, 17, 0x11, 0x22, 63, 0xFF, (s[j] + 1) & 255])
    elif kind == 8:
        s += bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
    else:
        s[i] = rng.randrange(256)
    return bytes(s)


def djpeg_accepts(data: bytes) -> bool:
    run = subprocess.run(["djpeg", "-strict", "-outfile", "/dev/null"], input=data,
                         capture_output=True, timeout=30)
    return run.returncode == 0


def test_we_reject_whatever_djpeg_rejects():
    rng = random.Random(2024)
    originals = streams()
    for data in originals:
        assert djpeg_accepts(data) and validate(data).ok
    unexplained, stricter = [], {}
    for _ in range(1500):
        data = rng.choice(originals)
        for _ in range(rng.randint(1, 2)):
            data = mutate(data, rng)
        report, theirs = validate(data), djpeg_accepts(data)
        if report.ok and not theirs:
            unexplained.append(("djpeg rejects, we accept", data))
        elif theirs and not report.ok and not re.search(OUT_OF_SCOPE, report.error):
            rule = next((r for pattern, r in STRICTER.items() if re.search(pattern, report.error)),
                        None)
            if rule is None:
                unexplained.append((report.error, data))
            stricter[rule] = stricter.get(rule, 0) + 1
    print("\n".join(f"{n:5d} x stricter than libjpeg: {rule}" for rule, n in stricter.items()))
    assert not unexplained, unexplained[:3]

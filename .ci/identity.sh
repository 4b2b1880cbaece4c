#!/bin/bash
# Byte-identity record (issue 14): bash .ci/identity.sh CHECKOUT OUTDIR, then diff -r two records
# (e.g. of the commit before and after a refactor) must print nothing.
# Writes into OUTDIR the outputs that must not move (prepared folders, a trained tiny checkpoint's
# weights, seeded sample.py outputs constrained and not, eval reports), with timing fields removed.
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"; W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
export PYTHONPATH=$REPO OMP_NUM_THREADS=1 TQDM_DISABLE=1
cd "$W"
py() { python3 "$@" > "$W/last.log" 2>&1 || { cat "$W/last.log"; exit 1; }; }
py -m nanocodec.prepare --kind jpeg --source demo --out data-jpeg --limit 96 --workers 1 --seed 3
py -m nanocodec.prepare --kind avc --source demo --out data-avc --limit 6 --workers 1 --seed 3
py "$REPO/train.py" --data=data-jpeg --max_steps=3 --max_minutes=0 --eval_every=2 --batch_size=2 --context=512 --out_dir=ck-jpeg --threads=1 --samples=1 --decode_samples=2
py "$REPO/train.py" --data=data-avc --max_steps=2 --max_minutes=0 --eval_every=2 --batch_size=1 --context=1024 --out_dir=ck-avc --threads=1 --decode_samples=1
mkdir -p prompts; python3 -c "
from nanocodec import demo; import shutil
from PIL import Image
Image.new('RGB',(80,60),(200,40,90)).save('prompts/a.png')
print(demo.clips()[0].path)" > clip.txt
py "$REPO/sample.py" --ckpt=ck-jpeg --num_samples=2 --max_new_tokens=200 --threads=1 --out=s-uncond
py "$REPO/sample.py" --ckpt=ck-jpeg --prompt=prompts --num_samples=2 --constrain --threads=1 --out=s-constrained
py "$REPO/sample.py" --ckpt=ck-jpeg --prompt=prompts --num_samples=1 --max_new_tokens=100 --threads=1 --out=s-prompted
py "$REPO/sample.py" --ckpt=ck-avc --prompt="$(tail -1 clip.txt)" --frames=2 --num_samples=1 --max_new_tokens=150 --threads=1 --out=s-video
py -m nanocodec.eval ck-jpeg --metrics=bpb,decode --decode_samples=2 --max_new_tokens=150 --threads=1 --out=e-jpeg
py -m nanocodec.eval ck-avc --metrics=bpb,decode --decode_samples=1 --max_new_tokens=150 --threads=1 --out=e-avc
for d in data-jpeg data-avc; do (cd $d && find . -type f ! -name '*.json' | sort | xargs sha256sum) > "$OUT/$d.sha"; done
for d in ck-jpeg ck-avc; do (cd $d && find . -type f \( -name '*.safetensors' -o -name '*.png' ! -name loss.png \) | sort | xargs sha256sum) > "$OUT/$d.sha"; done
for d in s-uncond s-constrained s-prompted s-video e-jpeg e-avc; do (cd $d && find . -type f ! -name '*.json' ! -name report.md | sort | xargs -r sha256sum) > "$OUT/$d.sha"; done
python3 - "$OUT" <<'PY'
import json, re, sys, pathlib
drop = re.compile(r"second|minute|tok_s|time|version|date|elapsed|mfu|path|dir|created|host|python|torch|^state\.pt$|^data$")
def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if not drop.search(k)}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x
out = pathlib.Path(sys.argv[1])
for f in sorted(pathlib.Path(".").rglob("*.json")) + sorted(pathlib.Path(".").rglob("*.jsonl")):
    if "previous" in f.parts: continue
    lines = f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]
    try:
        text = "\n".join(json.dumps(clean(json.loads(l)), sort_keys=True, indent=1) for l in lines if l.strip())
    except ValueError:
        text = f.read_text()
    (out / (str(f).replace("/", "__") + ".clean")).write_text(text + "\n")
PY
echo "identity record written to $OUT"

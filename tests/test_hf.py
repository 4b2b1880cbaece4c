"""nanocodec.hf against transformers and sentencepiece: a stand-in of the paper's release (random tiny
Llama, SentencePiece BPE trained here on Braille strings of real JPEG streams) imports with equal
logits and ids, samples valid JPEGs; a checkpoint trained here exports to a folder transformers
loads with our logits, and generate() with JpegLogitsProcessor writes only valid JPEGs."""
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from nanocodec import checkpoint, huffman, jpeg  # noqa: E402
from nanocodec.checkpoint import load_for_inference  # noqa: E402
from nanocodec.hf import HfError, JpegLogitsProcessor  # noqa: E402
from nanocodec.hf.convert import export_checkpoint, import_checkpoint  # noqa: E402
from nanocodec.hf.tokenizer import SentencePieceTokenizer, to_text  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # 4 MCUs at 4:2:0: real streams of a few hundred bytes


@pytest.fixture(scope="module")
def streams():
    from nanocodec import demo

    return [jpeg.encode(im, size=SIZE) for im in demo.render_images(demo.image_crops(24, seed=0), SIZE)]


def train_sentencepiece(streams, dummy_prefix: bool, byte_fallback: bool) -> bytes:
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([to_text(s) for s in streams]), model_writer=buf, model_type="bpe",
        vocab_size=600 if byte_fallback else 400, character_coverage=0.98 if byte_fallback else 1.0,
        add_dummy_prefix=dummy_prefix, byte_fallback=byte_fallback, max_sentence_length=1 << 20,
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return buf.getvalue()


def tiny_llama(vocab_size: int, seed: int = 0, tied: bool = False) -> LlamaForCausalLM:
    """A random 2-layer GQA Llama, with weights large enough that logits differ across tokens."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 if p.dim() > 1 else torch.rand_like(p) + 0.5)
    return model


def release_folder(root: Path, streams, dtype=torch.float32, dummy_prefix=True, byte_fallback=False, tied=False) -> tuple[Path, LlamaForCausalLM]:
    """The release's layout: config.json, pytorch_model.bin, tokenizer.model, tokenizer_config.json."""
    root.mkdir(parents=True, exist_ok=True)
    proto = train_sentencepiece(streams, dummy_prefix, byte_fallback)
    (root / "tokenizer.model").write_bytes(proto)
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                            "eos_token": "</s>", "unk_token": "<unk>"}))
    pieces = SentencePieceTokenizer(proto).vocab_size
    model = tiny_llama(pieces, tied=tied)
    model.config.save_pretrained(root)
    state = {k: v.to(dtype) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    torch.save(state, root / "pytorch_model.bin")
    return root, model


def hf_logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def our_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].float()


def assert_close_logits(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= 2e-5 * max(scale, 1.0), f"logits differ by {err:.3g} (scale {scale:.3g})"
    return err


@pytest.mark.parametrize("dummy_prefix", [True, False])
@pytest.mark.parametrize("byte_fallback", [False, True])
def test_encode_is_the_release_scripts_ids_and_decode_inverts_it(streams, dummy_prefix, byte_fallback):
    tok = SentencePieceTokenizer(train_sentencepiece(streams, dummy_prefix, byte_fallback))
    sp = tok.sp
    fallback_used = 0
    for s in streams:
        ids = tok.encode(s, bos=True)
        assert ids == [sp.bos_id()] + sp.encode("".join(chr(0x2800 + b) for b in s))
        assert tok.decode(ids) == s
        fallback_used += sum(sp.is_byte(i) for i in ids)
        prompt = jpeg.prompt(s, 0.5)
        assert tok.decode(tok.encode(prompt, bos=True, eos=True)) == prompt
    assert (fallback_used > 0) == byte_fallback  # the byte-fallback model really exercises <0xNN> runs
    first = sp.id_to_piece(tok.encode(streams[0])[0])
    assert first.startswith("\u2581") == dummy_prefix
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    assert tok.decode(tok.encode(noise)) == noise
    # Pieces with unknowable bytes stand for none, so the constraint can never pick them.
    for i in range(tok.vocab_size):
        if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) == "\u2581":
            assert tok.token_bytes(i) == b""
    assert tok.pad_id == sp.unk_id() and {tok.bos_id, tok.eos_id} == {sp.bos_id(), sp.eos_id()}
    assert set(tok.uncovered_bytes()) <= set(range(256)) and (not tok.uncovered_bytes()) == (not byte_fallback)


def test_encode_refuses_bytes_the_model_cannot_represent(streams):
    tok = SentencePieceTokenizer(train_sentencepiece(streams[:2], True, False))
    missing = tok.uncovered_bytes()
    assert missing, "two streams should leave some byte values unseen"
    with pytest.raises(HfError, match=f"0x{missing[0]:02x}"):
        tok.encode(bytes([missing[0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_gives_transformers_logits(streams, tmp_path, dtype):
    folder, model = release_folder(tmp_path / "hf", streams, dtype)
    info = import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    assert info["dtype"] == dtype
    bundle = load_for_inference(tmp_path / "ckpt")
    assert isinstance(bundle.tokenizer, SentencePieceTokenizer)
    assert bundle.manifest["codec"] == {"size": SIZE, "quality": 25, "subsampling": "4:2:0", "restart_blocks": 1}
    reference = model if dtype == torch.float32 else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert bundle.model.tok_embeddings.weight.dtype == dtype
    config, weights, state = checkpoint.load_training(tmp_path / "ckpt")  # what a resume reads
    assert state["step"] == config["step"] == 0 and set(weights) == set(bundle.model.state_dict())
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)  # the weights are the file's, bit for bit
    assert torch.equal(bundle.model.layers[1].feed_forward.w2.weight, saved["model.layers.1.mlp.down_proj.weight"])
    ids = bundle.tokenizer.encode(streams[0], bos=True)
    assert_close_logits(our_logits(bundle.model.float(), ids), hf_logits(reference, ids))


def test_import_sharded_safetensors_and_tied_embeddings(streams, tmp_path):
    folder, model = release_folder(tmp_path / "bin", streams, tied=True)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    (tmp_path / "sharded" / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ids = SentencePieceTokenizer.from_file(folder / "tokenizer.model").encode(streams[1], bos=True)
    for source in (folder, tmp_path / "sharded"):
        import_checkpoint(source, tmp_path / f"ckpt_{source.name}", codec={"size": SIZE})
        bundle = load_for_inference(tmp_path / f"ckpt_{source.name}")
        assert_close_logits(our_logits(bundle.model, ids), hf_logits(model, ids))


@pytest.mark.parametrize("preset", ["tiny", "1b", "7b"])
def test_layout_from_the_config_is_the_models(preset):
    from nanocodec.hf.convert import our_shapes
    from nanocodec.model import Llama, ModelConfig

    config = ModelConfig.preset(preset, vocab_size=579)
    with torch.device("meta"):
        model = Llama(config)
    assert our_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_imported_release_exports_back_to_a_folder_transformers_loads(streams, tmp_path):
    folder, model = release_folder(tmp_path / "hf", streams, byte_fallback=True)
    import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["nanocodec"]["codec"]["size"] == SIZE and config["pad_token_id"] == 0  # <unk> pads
    ids = SentencePieceTokenizer.from_file(folder / "tokenizer.model").encode(streams[5], bos=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert_close_logits(hf_logits(again, ids), hf_logits(model, ids))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "out")  # reading tokenizer.model needs protobuf (the hf extra)
    assert hf_tok(to_text(streams[5]))["input_ids"] == ids


def test_import_refuses_what_it_cannot_convert(streams, tmp_path):
    folder, _ = release_folder(tmp_path / "hf", streams)
    import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    with pytest.raises(HfError, match="already holds a checkpoint; pass --overwrite"):
        import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    with pytest.raises(HfError, match="multiple of 16"):
        import_checkpoint(folder, tmp_path / "other", codec={"size": 30})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
    with pytest.raises(HfError, match="RoPE scaling 'llama3'"):
        import_checkpoint(folder, tmp_path / "other")
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(HfError, match="model.layers.1.* has no place in a Llama of 1 layers"):
        import_checkpoint(folder, tmp_path / "other")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(HfError, match="no weights"):
        import_checkpoint(folder, tmp_path / "other")


def test_cli_import_then_sample_constrain_gives_valid_jpegs(streams, tmp_path):
    import subprocess

    folder, _ = release_folder(tmp_path / "hf", streams)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "nanocodec.hf", "import", str(folder), "--out", str(tmp_path / "ckpt"),
                           "--size", str(SIZE)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout and "peak RSS" in done.stdout
    sample = load_module("sample", ROOT / "sample.py")
    prompt = tmp_path / "prompt.png"
    jpeg.decode(streams[2]).save(prompt)
    for extra in ([], [f"--prompt={prompt}", "--ratio=0.5"]):
        out = tmp_path / f"samples{len(extra)}"
        summary = sample.main([f"--ckpt={tmp_path / 'ckpt'}", "--constrain", "--num_samples=2", f"--out={out}",
                               "--max_new_tokens=1500", "--device=cpu", *extra])
        assert summary["samples"] == summary["valid"] == 2 and summary["repaired"] == 0  # huffman.validate, unrepaired
        assert len(list(out.glob("*.jpg"))) == 2
        for path in sorted(out.glob("*.jpg")):
            data = path.read_bytes()
            im = Image.open(io.BytesIO(data))
            im.load()
            assert im.size == (SIZE, SIZE)


def test_eval_runs_on_the_imported_model_with_data_tokenized_by_its_tokenizer(streams, tmp_path):
    from nanocodec import demo, eval as evaluate
    from nanocodec.prepare import prepare

    folder, model = release_folder(tmp_path / "hf", streams)
    import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    (tmp_path / "images").mkdir()
    for i, im in enumerate(demo.render_images(demo.image_crops(12, seed=5), 48)):
        im.save(tmp_path / "images" / f"{i}.png")
    manifest = prepare("jpeg", str(tmp_path / "images"), tmp_path / "data", size=SIZE,
                       tokenizer=str(tmp_path / "ckpt" / "tokenizer.json"), val_fraction=0.5, workers=1)
    assert manifest["tokenizer_sha256"] == load_for_inference(tmp_path / "ckpt").tokenizer.sha256
    report = evaluate.run(evaluate.EvalConfig(ckpt=str(tmp_path / "ckpt"), data=str(tmp_path / "data"), metrics="bpb"))
    bpb = report["bits_per_byte"]
    assert bpb["whole_split"] and 0 < bpb["bits_per_byte"] < 64
    assert sum(r["bytes"] for r in bpb["regions"].values()) == bpb["bytes"] == manifest["splits"]["val"]["codec_bytes"]
    # An unconditional decode rate reads no data folder: the imported checkpoint's source folder is none.
    report = evaluate.run(evaluate.EvalConfig(ckpt=str(tmp_path / "ckpt"), metrics="decode", decode_samples=2,
                                              max_new_tokens=40, decode_constrained=False))
    assert report["data"] is None and report["decode_rate"]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of train.py after a few steps on a tiny prepared folder of real demo frames."""
    from nanocodec import demo
    from nanocodec.prepare import prepare

    root = tmp_path_factory.mktemp("trained")
    (root / "images").mkdir()
    for i, im in enumerate(demo.render_images(demo.image_crops(24, seed=1), 48)):
        im.save(root / "images" / f"{i:02d}.png")
    prepare("jpeg", str(root / "images"), root / "data", size=SIZE, merges=40, tokenizer_docs=24, val_fraction=0.2, workers=1)
    train = load_module("train", ROOT / "train.py")
    train.main([f"--data={root / 'data'}", f"--out_dir={root / 'run'}", "--dim=32", "--n_layers=2", "--n_heads=4",
                "--n_kv_heads=2", "--context=64", "--batch_size=2", "--max_steps=4", "--max_minutes=0",
                "--eval_every=1000", "--samples=0", "--warmup_steps=1"])
    return root / "run"


def test_export_loads_in_transformers_with_our_logits_and_tokens(trained, streams, tmp_path):
    export_checkpoint(trained, tmp_path / "hf")
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["top_p"] == 0.9 and generation["top_k"] == 40
    bundle = load_for_inference(trained)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = bundle.tokenizer.encode(streams[3], bos=True)[:64]
    assert_close_logits(our_logits(bundle.model, ids), hf_logits(model, ids))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.bos_token_id == bundle.tokenizer.bos_id and hf_tok.eos_token_id == bundle.tokenizer.eos_id
    assert hf_tok.pad_token_id == bundle.tokenizer.pad_id
    for data in (streams[3], b"\xff\xd8<bos><eos><pad>\x00\xff"):  # specials' spellings are plain bytes
        assert hf_tok(data.decode("latin-1"), add_special_tokens=False)["input_ids"] == bundle.tokenizer.encode(data)
        assert hf_tok.decode(bundle.tokenizer.encode(data)).encode("latin-1") == data
    # The exported folder imports back to the same model.
    import_checkpoint(tmp_path / "hf", tmp_path / "back", codec={"size": SIZE})
    back = load_for_inference(tmp_path / "back")
    assert back.tokenizer.sha256 == bundle.tokenizer.sha256
    assert torch.equal(our_logits(back.model, ids), our_logits(bundle.model, ids))


def test_generate_with_jpeg_logits_processor_gives_valid_jpegs(trained, streams, tmp_path):
    export_checkpoint(trained, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    bos, eos = model.config.bos_token_id, model.config.eos_token_id
    torch.manual_seed(0)
    for prompts in ([b"", b""], [jpeg.prompt(streams[4], 0.5)]):
        proc = JpegLogitsProcessor.from_pretrained(tmp_path / "hf", prompts=prompts)
        tokenizer = proc.tokenizer
        rows = [[bos] + tokenizer.encode(p) for p in prompts]
        assert len({len(r) for r in rows}) == 1
        out = model.generate(torch.tensor(rows), logits_processor=[proc], do_sample=True, max_new_tokens=1500,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_id)
        for prompt, row in zip(prompts, out):
            data = proc.decode(row)
            assert data.startswith(prompt) and row.tolist().count(eos) == 1
            assert huffman.validate(data).ok
            im = Image.open(io.BytesIO(jpeg.restore(data)))
            im.load()
            assert im.size == (SIZE, SIZE)


def test_processor_masks_lazily(trained, tmp_path):
    """A handful of validator feeds per step, not one per vocabulary entry."""
    from nanocodec.sampling import JpegConstraint

    export_checkpoint(trained, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    proc = JpegLogitsProcessor.from_pretrained(tmp_path / "hf", prompts=[b""])
    calls = []
    real_accept = JpegConstraint.accept

    def counting(self, row, token):
        calls.append(token)
        return real_accept(self, row, token)

    JpegConstraint.accept = counting
    try:
        torch.manual_seed(1)
        out = model.generate(torch.tensor([[model.config.bos_token_id]]), logits_processor=[proc], do_sample=True,
                             max_new_tokens=200, pad_token_id=proc.tokenizer.pad_id)
    finally:
        JpegConstraint.accept = real_accept
    steps = out.shape[1] - 1
    assert len(calls) < steps * proc.tokenizer.vocab_size / 10


@pytest.mark.gpu
def test_vllm_serves_the_export_with_valid_jpegs(trained, tmp_path):
    vllm = pytest.importorskip("vllm")
    from nanocodec.hf import VllmJpegLogitsProcessor

    export_checkpoint(trained, tmp_path / "hf")
    llm = vllm.LLM(model=str(tmp_path / "hf"), logits_processors=[VllmJpegLogitsProcessor], dtype="float32",
                   enforce_eager=True, gpu_memory_utilization=0.3)
    bos = json.loads((tmp_path / "hf" / "config.json").read_text())["bos_token_id"]
    params = vllm.SamplingParams(max_tokens=1500, temperature=1.0, top_k=40, top_p=0.9, seed=0, extra_args={"jpeg": True})
    outputs = llm.generate([{"prompt_token_ids": [bos]}] * 4, params)
    proc = JpegLogitsProcessor.from_pretrained(tmp_path / "hf")
    for o in outputs:
        assert huffman.validate(proc.decode(o.outputs[0].token_ids)).ok


def test_train_fine_tunes_an_imported_release_from_its_weights(streams, tmp_path):
    """`train.py --init_from` starts from the imported weights (its first val loss is theirs), keeps
    their model settings, and refuses data prepared with another tokenizer."""
    from nanocodec import demo
    from nanocodec.prepare import prepare

    folder, _ = release_folder(tmp_path / "hf", streams)
    import_checkpoint(folder, tmp_path / "ckpt", codec={"size": SIZE})
    (tmp_path / "images").mkdir()
    for i, im in enumerate(demo.render_images(demo.image_crops(12, seed=5), 48)):
        im.save(tmp_path / "images" / f"{i}.png")
    prepare("jpeg", str(tmp_path / "images"), tmp_path / "data", size=SIZE,
            tokenizer=str(tmp_path / "ckpt" / "tokenizer.json"), val_fraction=0.5, workers=1)
    train = load_module("train", ROOT / "train.py")
    common = [f"--data={tmp_path / 'data'}", "--context=64", "--batch_size=2", "--max_minutes=0",
              "--eval_every=1000", "--samples=0", "--decode_samples=0", "--warmup_steps=1"]
    model = train.main([f"--init_from={tmp_path / 'ckpt'}", f"--out_dir={tmp_path / 'tuned'}", "--max_steps=1",
                        "--lr=1e-9", *common])
    imported = checkpoint.load_for_inference(tmp_path / "ckpt").model.state_dict()
    tuned = model.state_dict()
    assert imported.keys() == tuned.keys()
    assert max(float((tuned[k].float() - imported[k].float()).abs().max()) for k in imported) < 1e-5
    saved = checkpoint.load_config(tmp_path / "tuned")
    assert {k: saved["model"][k] for k in ("dim", "n_layers", "n_kv_heads", "vocab_size")} == \
        {k: checkpoint.load_config(tmp_path / "ckpt")["model"][k] for k in ("dim", "n_layers", "n_kv_heads", "vocab_size")}
    train.main(["--resume", f"--out_dir={tmp_path / 'tuned'}", "--max_steps=2"])  # its resume keeps those settings
    assert checkpoint.load_config(tmp_path / "tuned")["step"] == 2

    prepare("jpeg", str(tmp_path / "images"), tmp_path / "other", size=SIZE, merges=20, val_fraction=0.5, workers=1)
    with pytest.raises(train.ConfigError, match="--tokenizer="):
        train.main([f"--init_from={tmp_path / 'ckpt'}", f"--out_dir={tmp_path / 'other-run'}", "--max_steps=1",
                    *common, f"--data={tmp_path / 'other'}"])
    with pytest.raises(train.ConfigError, match="drop --dim"):
        train.main([f"--init_from={tmp_path / 'ckpt'}", f"--out_dir={tmp_path / 'x'}", "--dim=64", *common])

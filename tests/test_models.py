"""The generated random-weight models: determinism, overwrite safety, shape
constraints, and that a real vLLM engine (CPU build) loads and serves them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecoserve.models import HEAD_DIM, MARKER, make_model, model_matches

ROOT = Path(__file__).resolve().parent.parent


def file_hashes(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------- generator


def test_same_seed_gives_identical_files_other_seed_differs(tiny_model: Path, tmp_path: Path) -> None:
    again = make_model(tmp_path / "again", size="tiny", seed=0)
    other = make_model(tmp_path / "other", size="tiny", seed=1)
    h0, h0b, h1 = file_hashes(tiny_model), file_hashes(again), file_hashes(other)

    assert h0 == h0b
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= set(h0)
    assert h1.keys() == h0.keys()
    assert h1["model.safetensors"] != h0["model.safetensors"]
    assert h1[MARKER] != h0[MARKER]
    # The tokenizer is shared by the whole family, whatever the seed.
    assert h1["tokenizer.json"] == h0["tokenizer.json"]


def test_refuses_to_overwrite_without_force(tiny_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        make_model(target, size="tiny", seed=0)
    assert [f.name for f in target.iterdir()] == ["notes.txt"]  # untouched

    out = make_model(target, size="tiny", seed=0, force=True)
    assert out == target.resolve()
    assert (target / "notes.txt").read_text() == "keep me"  # force replaces only our files
    assert model_matches(target, "tiny", 0)
    with pytest.raises(ValueError, match="not empty"):
        make_model(target, size="tiny", seed=1)

    # force with another seed replaces the model in place; no temp dirs are left over.
    make_model(target, size="tiny", seed=1, force=True)
    assert model_matches(target, "tiny", 1) and not model_matches(target, "tiny", 0)
    assert {f.name for f in tmp_path.iterdir()} == {"m"}


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        make_model(tmp_path / "x", size="huge")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        make_model(tmp_path / "file", size="tiny")


def test_config_and_tokenizer_fit_vllm_on_cpu(tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)

    assert config.model_type == "llama"
    assert config.head_dim == HEAD_DIM == config.hidden_size // config.num_attention_heads
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (256, 2, 2)
    assert config.vocab_size == len(tok)
    assert 256 < len(tok) <= 2048
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        config.bos_token_id,
        config.eos_token_id,
        config.pad_token_id,
    )
    assert tok.unk_token == "<unk>"

    text = "Hello world, the engine serves 42 requests!"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and max(ids) < config.vocab_size
    assert tok.decode(ids, skip_special_tokens=True) == text

    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|user|>\nhi there</s>\n<|assistant|>\n"

    marker = json.loads((tiny_model / MARKER).read_text())
    assert marker["size"] == "tiny" and marker["seed"] == 0


# ----------------------------------------------------------------- real engines

LLM_SCRIPT = textwrap.dedent(
    """
    import json, sys

    def main(model):
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, enforce_eager=True, max_model_len=512, dtype="bfloat16")
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        out = llm.generate(["The quick brown fox jumps over the lazy dog"], params)[0]
        result = {"token_ids": list(out.outputs[0].token_ids), "text": out.outputs[0].text,
                  "prompt_len": len(out.prompt_token_ids)}
        print("ECOSERVE_RESULT " + json.dumps(result), flush=True)

    if __name__ == "__main__":  # vLLM on CPU forces spawn: the guard is required
        main(sys.argv[1])
    """
)


@pytest.mark.engine
def test_vllm_engine_generates_with_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "gen.py"
    script.write_text(LLM_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=240,
        env=engine_env(),
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ECOSERVE_RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1].removeprefix("ECOSERVE_RESULT "))
    assert len(result["token_ids"]) == 8
    assert all(0 <= t < 2048 for t in result["token_ids"])
    assert result["prompt_len"] > 1

def test_cli_make_model_refuses_a_non_empty_directory_cleanly(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ecoserve.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["make-model", str(tmp_path)])
    assert res.exit_code == 1
    assert "not empty" in res.output and "Traceback" not in res.output
    assert (tmp_path / "keep.txt").read_text() == "mine"

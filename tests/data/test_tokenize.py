"""Transforms: exactly which tokens are trained, truncation/drop counts, and the cache."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import open_instruct.data.tokenize as T
from open_instruct.data.mixes import load_mix
from open_instruct.data.templates import install_template

EOS = "<|endoftext|>"
CONV = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 47 + 85?"},
    {"role": "assistant", "content": "7+5=12, 4+8+1=13. The answer is 132."},
    {"role": "user", "content": "Thanks! And 10 + 10?"},
    {"role": "assistant", "content": "0+0=0, 1+1=2. The answer is 20."},
]


def _tok(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(tokenizer, segments):
    """input_ids/labels from (text, trained) segments tokenised one by one."""
    ids, labels = [], []
    for text, trained in segments:
        piece = _tok(tokenizer, text)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    labels[0] = -100
    return ids, labels


@pytest.fixture
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_sft_labels_cover_exactly_assistant_content_and_eos(tok):
    ex = T.sft_example(tok, CONV, 512)
    ids, labels = _expected(
        tok,
        [
            ("<|system|>\nYou are helpful.\n<|user|>\nWhat is 47 + 85?\n<|assistant|>\n", False),
            (CONV[2]["content"] + EOS, True),
            ("\n<|user|>\nThanks! And 10 + 10?\n<|assistant|>\n", False),
            (CONV[4]["content"] + EOS, True),
        ],
    )
    assert ex["input_ids"] == ids
    assert ex["labels"] == labels
    assert ex["input_ids"] == _tok(tok, tok.apply_chat_template(CONV, tokenize=False))


def test_olmo2_bos_and_chatml_templates(tok):
    install_template(tok, "tulu", add_bos=True)
    ex = T.sft_example(tok, CONV[1:3], 512)
    assert ex["input_ids"][0] == tok.bos_token_id and ex["labels"][0] == -100
    assert tok.decode([t for t in ex["labels"] if t != -100]) == CONV[2]["content"] + EOS

    install_template(tok, "olmo")
    ex = T.sft_example(tok, CONV, 512)
    ids, labels = _expected(
        tok,
        [
            (
                "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 47 + 85?<|im_end|>\n"
                "<|im_start|>assistant\n",
                False,
            ),
            (CONV[2]["content"] + "<|im_end|>", True),  # the newline after the end token is not trained
            ("\n<|im_start|>user\nThanks! And 10 + 10?<|im_end|>\n<|im_start|>assistant\n", False),
            (CONV[4]["content"] + "<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert (ex["input_ids"], ex["labels"]) == (ids, labels)


def test_consecutive_assistant_turns(tok):
    conv = [CONV[1], {"role": "assistant", "content": "First."}, {"role": "assistant", "content": "Second."}]
    ex = T.sft_example(tok, conv, 512)
    spans = _trained_spans(tok, ex)
    assert spans == ["First." + EOS, "Second." + EOS]


def _trained_spans(tok, ex):
    spans, cur = [], []
    for i, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != -100:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


_text = st.text(alphabet="abc xyz0123456789+=.,?!\n", min_size=1, max_size=30).filter(
    lambda s: not s[0].isspace()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(_text, _text), min_size=1, max_size=4), system=st.one_of(st.none(), _text))
def test_any_conversation_trains_on_exactly_the_assistant_turns(tiny_tokenizer, turns, system):
    conv = [{"role": "system", "content": system}] if system else []
    for u, a in turns:
        conv += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    ex = T.sft_example(tiny_tokenizer, conv, 10_000)
    assert _trained_spans(tiny_tokenizer, ex) == [a + EOS for _, a in turns]


def test_sft_truncation_and_drops(tok, tmp_path):
    ex = T.sft_example(tok, CONV, 30)
    assert len(ex["input_ids"]) == 30 and ex["labels"][-1] != -100
    assert T.sft_example(tok, CONV[:3], 10) is None  # the prompt alone fills the limit


def test_preference_shares_prompt_and_trains_final_response(tok):
    prompt = CONV[:4]
    chosen = prompt + [{"role": "assistant", "content": "The answer is 20."}]
    rejected = prompt + [{"role": "assistant", "content": "The answer is 21, I think."}]
    ex = T.preference_example(tok, chosen, rejected, 512)
    p = ex["prompt_length"]
    prompt_ids = _tok(tok, tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    assert p == len(prompt_ids)
    for side, conv in (("chosen", chosen), ("rejected", rejected)):
        ids, labels = ex[f"{side}_input_ids"], ex[f"{side}_labels"]
        assert ids[:p] == prompt_ids and labels[:p] == [-100] * p  # earlier assistant turns not trained
        assert tok.decode(labels[p:]) == conv[-1]["content"] + EOS
        assert ids == _tok(tok, tok.apply_chat_template(conv, tokenize=False))
    short = T.preference_example(tok, chosen, rejected, p + 3)
    assert len(short["chosen_input_ids"]) == len(short["rejected_input_ids"]) == p + 3
    assert T.preference_example(tok, chosen, rejected, p) is None  # no room for any response token


def test_rlvr_prompt(tok):
    ex = T.rlvr_example(tok, CONV[:2], 512)
    assert ex["prompt"].endswith("<|assistant|>\n")
    assert ex["prompt_input_ids"] == _tok(tok, ex["prompt"])
    assert T.rlvr_example(tok, CONV[:2], len(ex["prompt_input_ids"]) - 1) is None


def test_tokenize_data_counts_drops(tok, samples_dir):
    mix = load_mix(samples_dir / "rlvr_mixed_sample.jsonl")
    td = T.tokenize_data(mix, tok, max_prompt_length=40, cache=False)
    assert td.num_input == 12 and td.num_dropped == 12 - len(td.dataset) > 0
    assert all(len(x) <= 40 for x in td.dataset["prompt_input_ids"])
    assert set(td.dataset.column_names) == {
        "prompt_input_ids",
        "prompt",
        "messages",
        "ground_truth",
        "dataset",
    }


@pytest.mark.parametrize(
    "kind,file,limit_name,needs",
    [
        (
            "sft",
            "sft_eval.jsonl",
            "max_seq_length",
            "(no trained token left after truncation); the shortest row needs max_seq_length >= {n}",
        ),
        (
            "preference",
            "preference_eval.jsonl",
            "max_seq_length",
            "(no room for a response token after the prompt); the shortest row needs max_seq_length >= {n}",
        ),
        (
            "rlvr",
            "rlvr_eval.jsonl",
            "max_prompt_length",
            "(prompt longer than the limit); the shortest prompt has {n} tokens",
        ),
    ],
)
def test_every_row_dropped_by_the_limit_is_a_one_line_error(
    tok, samples_dir, tmp_path, kind, file, limit_name, needs
):
    mix = load_mix(samples_dir / file, kind=kind)
    n = min(T.needed_length(tok, kind, row) for row in mix.dataset)
    with pytest.raises(T.DataError) as err:
        T.tokenize_data(mix, tok, **{limit_name: n - 1}, cache_dir=tmp_path)
    assert str(err.value) == (
        f"{mix.path}: {limit_name} {n - 1} drops all 200 {kind} rows " + needs.format(n=n)
    )
    assert list(tmp_path.iterdir()) == []  # no cache entry, no temp dir left behind
    # the number it names is exact: at that limit the shortest row survives
    td = T.tokenize_data(mix, tok, **{limit_name: n}, cache_dir=tmp_path)
    assert len(td.dataset) > 0 and td.num_dropped == 200 - len(td.dataset)


def test_plain_dataset_all_dropped_names_the_given_name(tok):
    from datasets import Dataset

    ds = Dataset.from_list([{"messages": CONV[1:3]}])
    with pytest.raises(T.DataError, match=r"^sft\.dataset_mix: max_seq_length 4 drops all 1 sft rows "):
        T.tokenize_data(ds, tok, "sft", max_seq_length=4, cache=False, name="sft.dataset_mix")


def test_cache_is_reused_and_keyed(tok, samples_dir, tmp_path, monkeypatch):
    calls = []
    real = T.sft_example
    monkeypatch.setattr(T, "sft_example", lambda *a, **k: calls.append(1) or real(*a, **k))
    mix = load_mix(samples_dir / "sft_eval.jsonl")

    first = T.tokenize_data(mix, tok, max_seq_length=64, cache_dir=tmp_path)
    assert not first.from_cache and len(calls) == 200
    second = T.tokenize_data(mix, tok, max_seq_length=64, cache_dir=tmp_path)
    assert second.from_cache and len(calls) == 200  # the transform did not run again
    assert second.dataset[:] == first.dataset[:] and second.cache_key == first.cache_key

    T.tokenize_data(mix, tok, max_seq_length=32, cache_dir=tmp_path)  # other settings: new entry
    assert len(calls) == 400
    other = AutoTokenizer.from_pretrained(tok.name_or_path)
    install_template(other, "olmo")
    assert T.cache_key(mix.content_hash, other, "sft", {"max_seq_length": 64}) != first.cache_key
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["sft", "sft"]  # no temp dirs left


def test_cache_dir_from_environment(tok, samples_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPEN_INSTRUCT_CACHE", str(tmp_path))
    td = T.tokenize_data(load_mix(samples_dir / "rlvr_eval.jsonl"), tok)
    assert td.cache_path.startswith(str(tmp_path / "tokenized"))


def test_num_proc(tok, samples_dir):
    mix = load_mix(samples_dir / "sft_eval.jsonl")
    a = T.tokenize_data(mix, tok, max_seq_length=64, cache=False)
    b = T.tokenize_data(mix, tok, max_seq_length=64, cache=False, num_proc=2)
    assert a.dataset[:] == b.dataset[:]


def test_sentencepiece_style_tokenizer_without_special_role_tokens():
    """Real tokenizers differ: here role markers are plain text split into many pieces, spaces are
    Metaspace '▁', and bytes fall back to <0x..> tokens. The spans must still be exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from open_instruct.model.tiny import training_corpus

    raw = Tokenizer(models.BPE(byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    specials = [EOS, "<|pad|>"] + [f"<0x{i:02X}>" for i in range(256)]
    raw.train_from_iterator(
        training_corpus(0, 2000),
        trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, bos_token=EOS, pad_token="<|pad|>")
    install_template(tok, "tulu")
    conv = CONV[1:] + [
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    ex = T.sft_example(tok, conv, 10_000)
    assert _trained_spans(tok, ex) == [c["content"] + EOS for c in conv if c["role"] == "assistant"]
    assert len(tok("<|assistant|>", add_special_tokens=False)["input_ids"]) > 1

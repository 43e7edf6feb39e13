import json
import time

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from tune_dialsum.errors import ModelNotFoundError, UsageError
from tune_dialsum.models import FAMILIES, GENERIC, check_model_available, family_of, load_model_and_tokenizer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_model_loads_with_plain_from_pretrained_trains_and_generates(tiny_models, family):
    path = str(tiny_models[family])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert model.config.model_type == family
    batch = tokenizer(
        ["Anna: see you at the cafe at 5 pm"] * 4,
        text_target=["Anna meets at 5 pm."] * 4,
        return_tensors="pt",
        padding=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    generated = model.generate(**tokenizer(["Anna: hi"], return_tensors="pt"), max_new_tokens=8)
    assert generated.shape[1] > 1
    assert isinstance(tokenizer.decode(generated[0], skip_special_tokens=True), str)


def test_families_carry_the_guides_defaults():
    assert (FAMILIES["bart"].learning_rate, FAMILIES["t5"].learning_rate, FAMILIES["pegasus"].learning_rate) == (
        2e-5,
        1e-4,
        5e-5,
    )
    assert FAMILIES["t5"].prefix == "summarize: " and FAMILIES["bart"].prefix == ""
    assert FAMILIES["pegasus"].batch_size == 2


def test_family_is_known_from_names_and_local_configs(tiny_models):
    assert family_of("facebook/bart-large-cnn").name == "bart"
    assert family_of("google/pegasus-cnn_dailymail").name == "pegasus"
    assert family_of("t5-small").name == "t5"
    assert family_of("some/other-model") is GENERIC
    assert family_of(str(tiny_models["t5"])).name == "t5"
    assert family_of("tiny:pegasus").name == "pegasus"


def test_unreachable_hub_name_fails_at_once_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(
        ModelNotFoundError, match="'facebook/bart-base' is not a local directory.*pass a local model directory"
    ):
        check_model_available("facebook/bart-base")
    assert time.perf_counter() - start < 5


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model_and_tokenizer(str(tmp_path))


def test_unknown_tiny_family_is_refused():
    with pytest.raises(UsageError, match="unknown model family 'gpt'"):
        check_model_available("tiny:gpt")


def test_tiny_name_is_built_on_first_use_in_the_cache(_isolated_cache):
    model, tokenizer = load_model_and_tokenizer("tiny:t5")
    assert model.config.model_type == "t5"
    assert (_isolated_cache / "tiny_models" / "t5-synthetic" / "config.json").is_file()


def _split_files(root, train_word: str, held_out_word: str):
    root.mkdir(parents=True, exist_ok=True)
    for split, word in (("train", train_word), ("validation", held_out_word), ("test", held_out_word)):
        rows = [
            {"id": f"{split}{i}", "dialogue": f"Anna: {word} {i}\nTom: ok", "summary": f"{word} {i}"} for i in range(5)
        ]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_tiny_tokenizers_learn_the_train_split_of_their_data_only(tmp_path):
    from tune_dialsum.models import _tokenizer_texts

    data = _split_files(tmp_path / "data", "trainword", "heldoutword")
    texts = list(_tokenizer_texts(str(data)))
    assert any("trainword" in t for t in texts)
    assert not any("heldoutword" in t for t in texts)


def test_tiny_models_are_cached_per_version_of_their_data(tmp_path, _isolated_cache):
    import os

    from tune_dialsum.models import resolve_model_path

    data = _split_files(tmp_path / "data", "alpha", "beta")
    first = resolve_model_path("tiny:bart", str(data))
    assert resolve_model_path("tiny:bart", str(data)) == first  # built once
    assert resolve_model_path("tiny:bart", None) != first  # the synthetic fallback is another model
    other = _split_files(tmp_path / "other", "gamma", "beta")
    assert resolve_model_path("tiny:bart", str(other)) != first
    os.utime(data / "validation.jsonl", (1, 1))  # the held-out splits do not decide the tokenizer
    assert resolve_model_path("tiny:bart", str(data)) == first
    (data / "train.jsonl").write_text((data / "train.jsonl").read_text() + (data / "train.jsonl").read_text())
    assert resolve_model_path("tiny:bart", str(data)) != first  # edited in place: a new tokenizer

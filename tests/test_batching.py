"""How training batches are drawn: length-grouped batches in random order, or random batches."""

import pytest
import torch
from torch.utils.data import RandomSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from tests.conftest import BUNDLED_DATA
from tune_dialsum import DialogueDataLoader, DialogueSummarizationTrainer
from tune_dialsum.batching import ShuffledLengthGroupedSampler
from tune_dialsum.space_schema import TrialSettings


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_shuffled_batches_are_transformers_length_groups_in_another_order():
    lengths = [int(n) for n in torch.randint(5, 400, (1000,), generator=torch.Generator().manual_seed(1))]
    size = 16
    grouped = get_length_grouped_indices(lengths, size, generator=torch.Generator().manual_seed(7))
    shuffled = list(ShuffledLengthGroupedSampler(size, lengths=lengths, generator=torch.Generator().manual_seed(7)))

    assert sorted(shuffled) == list(range(1000))
    # the same batches (the DataLoader cuts the order every `size` indices): the padding saving is kept
    assert sorted(map(sorted, _batches(shuffled, size))) == sorted(map(sorted, _batches(grouped, size)))
    assert _batches(shuffled, size)[0] == _batches(grouped, size)[0]  # the longest example's batch first
    assert max(lengths[i] for i in _batches(shuffled, size)[0]) == max(lengths)
    assert _batches(shuffled, size)[-1] == _batches(grouped, size)[-1]  # the short last batch last
    # transformers' mega-batches run longest first; in random order a batch's longest example is
    # about as often shorter as longer than the next batch's
    assert 0.3 < _share_falling(shuffled, lengths, size) < 0.7
    assert _share_falling(grouped, lengths, size) > 0.8


def _share_falling(order: list[int], lengths: list[int], size: int) -> float:
    """The share of (whole) batches whose longest example is longer than the next batch's."""
    longest = [max(lengths[i] for i in batch) for batch in _batches(order, size)[:-1]]
    return sum(a > b for a, b in zip(longest[:-1], longest[1:], strict=True)) / (len(longest) - 1)


@pytest.mark.parametrize(
    ("batch_order", "sampler"), [("length_grouped", ShuffledLengthGroupedSampler), ("random", RandomSampler)]
)
def test_the_batch_order_setting_reaches_the_trainers_sampler(tiny_models, tmp_path, batch_order, sampler):
    settings = TrialSettings(model=str(tiny_models["t5"]), batch_size=8, batch_order=batch_order)
    trainer = DialogueSummarizationTrainer.for_settings(settings, str(tmp_path), tensorboard=False)
    train = DialogueDataLoader(BUNDLED_DATA).load_splits()["train"].head(64)
    datasets = trainer.load_and_prepare_data(train, val_df=train.head(4))
    hf_trainer = trainer.build_trainer(datasets, trainer.training_arguments(settings))
    assert type(hf_trainer._get_train_sampler()) is sampler


def test_the_guides_group_by_length_flag_maps_onto_the_batch_order(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    assert trainer.get_training_arguments().train_sampling_strategy == "group_by_length"  # the default
    assert trainer.get_training_arguments(group_by_length=False).train_sampling_strategy == "random"
    assert trainer.get_training_arguments(batch_order="random").train_sampling_strategy == "random"

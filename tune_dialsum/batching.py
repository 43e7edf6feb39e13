"""How training batches are drawn: the Seq2SeqTrainer the trainer builds, with length-grouped batches in random order.

transformers' ``group_by_length`` (``LengthGroupedSampler``) cuts a shuffled epoch into mega-batches of up
to 50 batches and sorts each longest first, so an epoch sweeps from long dialogues to short ones a few
times over. On the bundled bed that cost 0.011 test ROUGE-L against random batches (13 of 16 runs;
BENCHMARKS.md, "Batch order"), while random batches pad more and trained 1.25x as long. Visiting the
same length-grouped batches in random order keeps the padding saving and drops the sweep.

Imported only where a trainer is built: it imports transformers.
"""

from __future__ import annotations

import torch
from transformers import Seq2SeqTrainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped batches, visited in random order.

    The batch with the longest example stays first (as transformers has it: an out-of-memory error
    comes at the first step, not mid-epoch), and the last, possibly short, batch stays last, so the
    DataLoader cutting this order every ``batch_size`` indices gets back exactly these batches.
    """

    def __iter__(self):
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        whole = len(order) // self.batch_size * self.batch_size
        batches = [order[start : start + self.batch_size] for start in range(0, whole, self.batch_size)]
        if len(batches) > 1:
            rest = torch.randperm(len(batches) - 1, generator=self.generator).tolist()
            batches = [batches[0], *(batches[1 + i] for i in rest)]
        return iter([index for batch in batches for index in batch] + order[whole:])


class DialogueSeq2SeqTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose ``group_by_length`` batches come in random order (the module's docstring says why)."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return ShuffledLengthGroupedSampler(
                sampler.batch_size, lengths=sampler.lengths, generator=sampler.generator
            )
        return sampler

"""The rules that make a set of ``generate()`` settings consistent, in one place.

The decoding stage samples settings over a checkpoint's training decoding, the export writes the
chosen ones into ``generation_config.json``, and inference passes them per call: each must give
generate() one length limit, and no beam-only setting with greedy decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# generate() settings that act only with beam search: transformers 5 refuses to save a greedy config with them
BEAM_ONLY = ("length_penalty", "early_stopping")


def trial_decoding(config: dict) -> dict:
    """The ``generate()`` settings a trial was scored with during training."""
    decoding = {"num_beams": int(config.get("generation_num_beams") or 1)}
    max_length = config.get("generation_max_length") or config.get("max_target_length")
    if max_length:
        decoding["max_length"] = int(max_length)
    return decoding


def generate_settings(training_decoding: dict, sampled: dict) -> dict:
    """The sampled settings over the training decoding, made consistent for ``generate()``."""
    settings = {**training_decoding, **sampled}
    if "max_new_tokens" in settings:  # generate() would warn and use max_new_tokens anyway
        settings.pop("max_length", None)
    if "min_new_tokens" in settings and "max_new_tokens" in settings:
        settings["min_new_tokens"] = min(settings["min_new_tokens"], settings["max_new_tokens"])
    if settings.get("num_beams", 1) == 1:  # greedy: a length penalty would change nothing
        for name in BEAM_ONLY:
            settings.pop(name, None)
    return settings


def apply_to_config(config, settings: dict) -> None:
    """Set ``settings`` on a ``GenerationConfig`` so that it saves and decodes as they say."""
    from transformers import GenerationConfig

    if "max_new_tokens" in settings:  # one length limit: generate() would warn about two
        config.max_length = GenerationConfig().max_length
    for name, value in settings.items():
        setattr(config, name, value)
    if (config.num_beams or 1) == 1:  # greedy: transformers 5 refuses to save beam-only settings with it
        for name in BEAM_ONLY:
            setattr(config, name, None)


@contextmanager
def one_length_limit(config, generation: dict) -> Iterator[None]:
    """Where ``max_new_tokens`` is asked for, the config's ``max_length`` stands aside for the call.

    generate() uses ``max_new_tokens`` anyway, but warns on every batch when the model's config
    also sets ``max_length``, as nearly every config does.
    """
    if generation.get("max_new_tokens") is None or config.max_length is None:
        yield
        return
    saved, config.max_length = config.max_length, None
    try:
        yield
    finally:
        config.max_length = saved

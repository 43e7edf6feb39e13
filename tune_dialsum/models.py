"""Loading seq2seq models by hub name or local path, and building tiny offline ones.

Families (BART, T5, PEGASUS) carry the training guide's defaults: learning
rate, batch size and, for T5, the ``summarize: `` input prefix. Anything else
loads generically through the Auto classes with neutral defaults.

Tiny models are real models of a family, randomly initialised from a small
config, with a byte-level BPE tokenizer trained on the data and everything
saved with ``save_pretrained``: they load through exactly the same code path as
``facebook/bart-base``. A model name ``tiny:bart`` (``tiny:t5``,
``tiny:pegasus``) names such a model in the local cache, built on first use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tune_dialsum import adapters
from tune_dialsum.atomic import atomic_directory
from tune_dialsum.errors import ModelNotFoundError, UsageError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    learning_rate: float
    batch_size: int
    prefix: str = ""


FAMILIES = {
    "bart": ModelFamily("bart", learning_rate=2e-5, batch_size=4),
    "t5": ModelFamily("t5", learning_rate=1e-4, batch_size=4, prefix="summarize: "),
    "pegasus": ModelFamily("pegasus", learning_rate=5e-5, batch_size=2),
}
GENERIC = ModelFamily("generic", learning_rate=5e-5, batch_size=4)
# config.model_type values that belong to a family
_MODEL_TYPES = {
    "bart": "bart",
    "mbart": "bart",
    "t5": "t5",
    "mt5": "t5",
    "longt5": "t5",
    "umt5": "t5",
    "pegasus": "pegasus",
    "pegasus_x": "pegasus",
}
TINY_PREFIX = "tiny:"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNE_DIALSUM_CACHE", Path.home() / ".cache" / "tune_dialsum"))


def resolve_model_path(name: str, data_dir: str | None = None) -> str:
    """Map ``tiny:FAMILY`` to its cached directory (building it if absent); return other names as is.

    A tiny model's tokenizer is learnt from the train split of ``data_dir``, so there is one tiny
    model per family and per version of that data (see :func:`tiny_model_dir`).
    """
    if name.startswith(TINY_PREFIX):
        family = name[len(TINY_PREFIX) :]
        return str(ensure_tiny_model(family, tiny_model_dir(family, data_dir), data_dir))
    return name


def tiny_model_dir(family: str, data_dir: str | None) -> Path:
    """Where ``tiny:FAMILY`` for ``data_dir`` is cached: keyed by the train split's fingerprint."""
    from tune_dialsum.data import DialogueDataLoader

    key = "synthetic" if data_dir is None else DialogueDataLoader(data_dir).fingerprint(("train",))
    return cache_dir() / "tiny_models" / f"{family}-{key}"


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides how ``tokenizer`` splits text into ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation and padding are the state of the last call, not how text is split
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        state = tokenizer.get_vocab()
    text = json.dumps([state, tokenizer.special_tokens_map], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def family_of(name_or_path: str) -> ModelFamily:
    """The family of a model: from a local config.json (an adapter's: its base model's), else from the name."""
    if name_or_path.startswith(TINY_PREFIX):
        return _family_by_name(name_or_path[len(TINY_PREFIX) :])
    path = Path(name_or_path).expanduser()
    if adapters.is_adapter(path):
        return family_of(adapters.base_model(path))
    config_file = path / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type", "")
        return FAMILIES.get(_MODEL_TYPES.get(model_type, ""), GENERIC)
    lowered = name_or_path.lower()
    for key in ("pegasus", "bart", "t5"):  # pegasus first: no name holds two of them
        if key in lowered:
            return FAMILIES[key]
    return GENERIC


def _family_by_name(family: str) -> ModelFamily:
    if family not in FAMILIES:
        raise UsageError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers at all; one quick connect, no retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_available(name: str) -> None:
    """Fail at once, with a fix, when ``name`` can be neither found locally nor downloaded.

    Without this, transformers retries the hub for about half a minute per
    file before giving up with a message about internet connections.
    """
    if name.startswith(TINY_PREFIX):
        _family_by_name(name[len(TINY_PREFIX) :])
        return
    path = Path(name).expanduser()
    if path.exists():
        if adapters.is_adapter(path):  # a LoRA checkpoint or export: its base model must be there too
            check_model_available(adapters.base_model(path))
            return
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {name!r}: {path} has no config.json; pass a directory saved with save_pretrained"
            )
        return
    if _in_hub_cache(name) or hub_reachable():
        return
    raise ModelNotFoundError(
        f"model {name!r} is not a local directory, not in the Hugging Face cache, and the hub "
        f"cannot be reached; pass a local model directory instead (offline demo: tiny:bart, or "
        f"python -m tune_dialsum tiny-model --family bart --out DIR)"
    )


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id is simply not cached
        return False


def load_model_and_tokenizer(name: str, trust_remote_code: bool = False, data_dir: str | None = None):
    """Load a seq2seq model and its tokenizer by hub name, local path or ``tiny:FAMILY``.

    ``data_dir`` matters for ``tiny:FAMILY`` only: the data whose train split its tokenizer learns.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    check_model_available(name)
    path = resolve_model_path(name, data_dir)
    offline = not Path(path).expanduser().exists() and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
        if adapters.is_adapter(path):  # the base model, the adapter attached (its tokenizer is saved beside it)
            return adapters.load_with_adapter(path, trust_remote_code), tokenizer
        model = AutoModelForSeq2SeqLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=offline
        )
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"model {name!r} could not be loaded: {str(err).splitlines()[0]}") from None
    return model, tokenizer


# -- tiny offline models ---------------------------------------------------------------

TINY_DIMENSIONS = dict(d_model=64, layers=2, heads=4, ffn=128, max_positions=512)
TINY_VOCAB_SIZE = 2000


def _special_tokens(family: str) -> dict[str, str]:
    if family == "bart":
        return dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    return dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def train_tokenizer(family: str, texts, vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on ``texts``, with ``family``'s special tokens and ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_tokens(family)
    # The order fixes the ids: BART has <s>=0 <pad>=1 </s>=2; T5 and PEGASUS <pad>=0 </s>=1.
    ordered = list(specials.values())
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=ordered, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos = ("</s>", tokenizer.token_to_id("</s>"))
    if family == "bart":
        bos = ("<s>", tokenizer.token_to_id("<s>"))
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[bos, eos]
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=TINY_DIMENSIONS["max_positions"], **specials
    )


def tiny_config(family: str, tokenizer, dimensions: dict | None = None):
    """A small config of ``family`` whose special-token ids match ``tokenizer``.

    ``dimensions`` (keys as TINY_DIMENSIONS) gives other sizes: benchmarks/gpu_check.py builds bart-base's.
    """
    from transformers import BartConfig, PegasusConfig, T5Config

    d = dimensions or TINY_DIMENSIONS
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, vocab_size=len(tokenizer))
    if family == "t5":
        return T5Config(
            d_model=d["d_model"],
            d_kv=d["d_model"] // d["heads"],
            d_ff=d["ffn"],
            num_layers=d["layers"],
            num_decoder_layers=d["layers"],
            num_heads=d["heads"],
            decoder_start_token_id=tokenizer.pad_token_id,
            **ids,
        )
    shared = dict(
        d_model=d["d_model"],
        encoder_layers=d["layers"],
        decoder_layers=d["layers"],
        encoder_attention_heads=d["heads"],
        decoder_attention_heads=d["heads"],
        encoder_ffn_dim=d["ffn"],
        decoder_ffn_dim=d["ffn"],
        max_position_embeddings=d["max_positions"],
        **ids,
    )
    if family == "bart":
        return BartConfig(
            bos_token_id=tokenizer.bos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=None,
            **shared,
        )
    return PegasusConfig(decoder_start_token_id=tokenizer.pad_token_id, **shared)


def _tokenizer_texts(data_dir: str | None):
    """Train-split text only: a tokenizer that learnt validation or test text would leak them."""
    from tune_dialsum.data import DialogueDataLoader, format_dialogue
    from tune_dialsum.data.synthetic import generate_dialogues

    if data_dir is None:  # the trainer API with no data named: the project's own generator
        frame = generate_dialogues(2000, seed=0)
    else:
        frame = DialogueDataLoader(data_dir).load_splits()["train"]
    for dialogue, summary in zip(frame["dialogue"], frame["summary"], strict=True):
        yield format_dialogue(dialogue, "turns")  # carries speakers, markers and the text
        yield summary


def build_tiny_model(
    family: str, out_dir: str | Path, data_dir: str | None = None, seed: int = 0, dimensions: dict | None = None
) -> Path:
    """Build and save a tiny, randomly initialised model of ``family`` at ``out_dir``.

    The tokenizer is trained on the train split of ``data_dir`` (the project's
    synthetic dialogues when None). The directory is written atomically.
    ``dimensions`` (keys as TINY_DIMENSIONS) builds a bigger one, as the benchmarks' test beds do.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    _family_by_name(family)
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(family, _tokenizer_texts(data_dir))
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(tiny_config(family, tokenizer, dimensions))
    model.generation_config.max_length = 64
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir


def ensure_tiny_model(family: str, out_dir: Path, data_dir: str | None = None, dimensions: dict | None = None) -> Path:
    """The tiny model at ``out_dir``, built first (its tokenizer from ``data_dir``) if it is not there yet."""
    if (out_dir / "config.json").is_file():
        return out_dir
    return build_tiny_model(family, out_dir, data_dir=data_dir, dimensions=dimensions)

"""LoRA adapters (peft): what a trial's adapter wraps, training through one, and merging it into a plain model.

``adapter: lora`` trains low-rank updates of a few projections instead of every weight, so a trial holds
a fraction of the optimizer state and its checkpoints hold the adapter alone (``adapter_config.json``
names the base model). transformers loads such a directory as base + adapter where peft is installed;
the export merges the adapter in (``merge_and_unload``), so the delivered model needs no peft.

peft is an optional extra (``tune_dialsum[peft]``): it is imported only where an adapter is asked for.
Nothing here imports torch, transformers or peft at module level: the space's checks read the names.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tune_dialsum.errors import UsageError

ADAPTERS = ("none", "lora")
# The settings that mean something only with adapter: lora (the space refuses them without it).
LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's: in an adapter checkpoint instead of config.json
INSTALL_PEFT = 'pip install "tune_dialsum[peft]"'
# peft's name for "every linear layer but the output head"
ALL_LINEAR = "all-linear"
# What LoRA wraps where a space does not say: the attention's query and value projections, as the LoRA
# paper did and peft's own defaults do for these families.
DEFAULT_TARGET_MODULES = {"bart": "q_proj,v_proj", "pegasus": "q_proj,v_proj", "t5": "q,v"}
# The linear layers of each family's blocks, by the name peft matches (the last part of the module's name).
LINEAR_MODULES = {
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "pegasus": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "t5": ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"),
}


def target_module_names(value: str) -> list[str]:
    """``lora_target_modules`` as a list: comma-separated module names."""
    return [name.strip() for name in value.split(",") if name.strip()]


def unknown_target_modules(value: str, family: str) -> list[str]:
    """The names in ``value`` that are not a linear layer of ``family`` (none known for other families)."""
    if value == ALL_LINEAR or family not in LINEAR_MODULES:
        return []
    return [name for name in target_module_names(value) if name not in LINEAR_MODULES[family]]


def without_unused(settings: dict) -> dict:
    """``settings`` without the LoRA settings where the adapter is not LoRA: they were not trained with."""
    if settings.get("adapter", "none") == "lora":
        return dict(settings)
    return {name: value for name, value in settings.items() if name not in LORA_SETTINGS}


def peft_missing() -> str | None:
    """Why an adapter cannot be trained here, in one line; None where peft is installed."""
    if importlib.util.find_spec("peft") is None:
        return f"adapter: lora needs peft, which is not installed; install it with {INSTALL_PEFT}"
    return None


def _require_peft() -> None:
    problem = peft_missing()
    if problem:
        raise UsageError(problem)


def with_lora(model, settings, family: str):
    """``model`` wrapped for LoRA training with ``settings`` (a TrialSettings with adapter: lora)."""
    _require_peft()
    from peft import LoraConfig, TaskType, get_peft_model

    targets = settings.lora_target_modules or DEFAULT_TARGET_MODULES.get(family)
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=int(settings.lora_r),
        lora_alpha=float(settings.lora_alpha),
        lora_dropout=float(settings.lora_dropout),
        # None: peft's own choice for the model type (a family this table does not know)
        target_modules=None if targets is None else targets if targets == ALL_LINEAR else target_module_names(targets),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UsageError(f"lora_target_modules {targets!r}: {first}") from None


def parameter_counts(model) -> dict[str, int]:
    """How many of ``model``'s parameters train, of how many."""
    parameters = list(model.parameters())
    return {
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parameters),
    }


def is_adapter(directory: str | Path) -> bool:
    """A directory holding a peft adapter (and no full model)."""
    directory = Path(directory)
    return (directory / ADAPTER_CONFIG_FILE).is_file() and not (directory / "config.json").is_file()


def refuse_training_from(model: str) -> None:
    """Fail in one line where ``model`` is an adapter directory: trained from, its checkpoints would hold the
    untouched adapter alone."""
    if is_adapter(Path(model).expanduser()):
        raise UsageError(
            f"model {model!r} is a LoRA adapter, not a model to train from: export the experiment without "
            "--adapter-only (the adapter merged into its base) and train from that"
        )


def base_model(directory: str | Path) -> str:
    """The base model an adapter directory was trained on (a hub name or a path)."""
    return json.loads((Path(directory) / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"]


def load_with_adapter(directory: str | Path, trust_remote_code: bool = False):
    """The base model with the adapter of ``directory`` attached (transformers' peft integration)."""
    _require_peft()
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    model = AutoModelForSeq2SeqLM.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    if (Path(directory) / "generation_config.json").is_file():  # an export's decoding, not the base model's
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    return model


def merge_in_place(directory: Path, trust_remote_code: bool = False) -> dict:
    """Replace the adapter in ``directory`` by the base model with the adapter merged in: a plain model.

    Returns what the card records: the base model and the adapter's settings.
    """
    _require_peft()
    from peft import AutoPeftModelForSeq2SeqLM

    config = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
    merged = AutoPeftModelForSeq2SeqLM.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    merged = merged.merge_and_unload()
    for name in (ADAPTER_CONFIG_FILE, "adapter_model.safetensors", "adapter_model.bin"):
        (directory / name).unlink(missing_ok=True)
    merged.save_pretrained(str(directory))
    return describe(config, merged=True)


def keep_base_generation_config(directory: Path, trust_remote_code: bool = False) -> None:
    """Give an adapter directory its base model's generation config (start token, lengths), for an export's
    decoding to be written into: the adapter's own would replace the base model's whole."""
    from transformers import AutoConfig, GenerationConfig

    if (directory / "generation_config.json").is_file():
        return
    base = base_model(directory)
    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:  # a base saved without one: the defaults its config implies
        generation = GenerationConfig.from_model_config(
            AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
        )
    generation.save_pretrained(str(directory))


def describe(config: dict, merged: bool) -> dict:
    """An adapter's record for tuning.json and the card."""
    targets = config.get("target_modules")
    return {
        "type": "lora",
        "merged": merged,
        "base_model": config.get("base_model_name_or_path"),
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "dropout": config.get("lora_dropout"),
        "target_modules": sorted(targets) if isinstance(targets, list | set) else targets,
    }


def read_description(directory: Path) -> dict:
    """The record of the adapter a directory holds, unmerged."""
    return describe(json.loads((directory / ADAPTER_CONFIG_FILE).read_text()), merged=False)

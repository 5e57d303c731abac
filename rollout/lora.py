"""LoRA adapters on the UNet through peft: attach, export/import as a versioned state dict, save for diffusers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import LatentConsistencyModelPipeline
from diffusers.training_utils import cast_training_params
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from rollout.precision import TRAINABLE_DTYPE
from rollout.settings import LoraSettings

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class AdapterVersion:
    """The LoRA weights (peft names, fp32, CPU) of one policy version."""

    version: int
    state_dict: dict[str, torch.Tensor]


def add_lora(unet: torch.nn.Module, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Attach a trainable fp32 LoRA adapter to a frozen UNet; returns the adapter parameters."""
    try:
        unet.add_adapter(settings.peft_config())
    except ValueError as error:
        raise ValueError(f"LoRA target_modules {settings.target_modules} do not fit this UNet: {error}") from error
    cast_training_params(unet, dtype=TRAINABLE_DTYPE)
    return [p for p in unet.parameters() if p.requires_grad]


def export_adapter(unet: torch.nn.Module, version: int) -> AdapterVersion:
    """Copy the adapter weights off the model (CPU, fp32) tagged with `version`."""
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(unet).items()}
    return AdapterVersion(version=version, state_dict=state)


def import_adapter(unet: torch.nn.Module, adapter: AdapterVersion) -> None:
    """Load adapter weights exported by `export_adapter` into a UNet carrying the same LoRA layout."""
    result = set_peft_model_state_dict(unet, adapter.state_dict)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter has weights this UNet's LoRA layout lacks: {unexpected[:5]}")


def adapter_metadata(settings: LoraSettings) -> dict:
    """peft's LoraConfig as a dict, sets as sorted lists: identical runs write byte-identical files
    (a set of module names is ordered by string hash, which differs from process to process)."""
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in settings.peft_config().to_dict().items()}


def save_lora(directory: str | Path, unet: torch.nn.Module, settings: LoraSettings) -> Path:
    """Write `pytorch_lora_weights.safetensors` for `load_lora_weights`, with metadata so alpha survives.

    Keys stay in peft naming (`unet.<module>.lora_A.weight`), which diffusers loads as is; the old
    `lora.down` naming has no form for conv layers.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(unet)
    LatentConsistencyModelPipeline.save_lora_weights(
        directory,
        unet_lora_layers={k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()},
        unet_lora_adapter_metadata=adapter_metadata(settings),
        safe_serialization=True,
    )
    sort_safetensors_metadata(directory / LORA_WEIGHTS_NAME)
    return directory / LORA_WEIGHTS_NAME


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its `__metadata__` keys sorted, in place (the file keeps its size).

    safetensors writes the metadata map in hash order, which changes from process to process.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > size:  # cannot happen for the same content; leave the file as written
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))  # safetensors pads headers with spaces

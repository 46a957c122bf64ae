"""Load a frozen backbone from a simclr.py checkpoint or from a plain backbone state_dict."""
from __future__ import annotations

import torch

from data.datasets import DatasetInfo, input_info
from models.finetune import KeptHead, build_head
from models.resnet import ResNetBackbone, build_backbone
from training.recipe import recipe
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.errors import UserError


def checkpoint_args(state: dict) -> dict:
    """The args a simclr.py checkpoint was trained with; {} for a plain state_dict."""
    return state.get("args", {}) if "model" in state else {}


def backbone_state(state: dict) -> dict[str, torch.Tensor]:
    """The backbone's tensors from a simclr.py checkpoint, a SimCLR state_dict or a backbone state_dict."""
    weights = state.get("model", state)
    if any(k.startswith("backbone.") for k in weights):
        return {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def load_backbone(filename: str, arch: str | None = None, stem: str | None = None,
                  width_multiplier: int | None = None) -> tuple[ResNetBackbone, dict]:
    """Build the backbone the checkpoint was trained with (options override) and load its weights strictly.

    Returns (backbone, args stored in the checkpoint or {}). A key missing from the file or left over
    in it is an error naming the keys: a linear evaluation of a half-loaded network is worthless."""
    path = find_checkpoint(filename)
    return backbone_from_state(load_checkpoint(path), path, arch, stem, width_multiplier)


def backbone_from_state(state: dict, path: str, arch: str | None, stem: str | None,
                        width_multiplier: int | None) -> tuple[ResNetBackbone, dict]:
    """``load_backbone`` of the checkpoint ``state`` already loaded from ``path``."""
    saved = checkpoint_args(state)
    arch = arch or saved.get("arch")
    stem = stem or saved.get("stem")
    if arch is None or stem is None:
        raise UserError(f"{path} is a plain state_dict without the run's args: pass --arch and --stem")
    backbone = build_backbone(arch, stem, width_multiplier or saved.get("width_multiplier", 1))
    weights = backbone_state(state)
    result = backbone.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{path} does not match {arch} with the {stem} stem: missing keys "
                        f"{result.missing_keys[:4]}, unexpected keys {result.unexpected_keys[:4]}; "
                        f"check --arch/--stem")
    return backbone, saved


def random_init_like(backbone: ResNetBackbone, arch: str, seed: int) -> ResNetBackbone:
    """The same network (``arch``, stem, width) at a seeded random initialisation: the baseline of linear evaluation."""
    torch.manual_seed(seed)
    return build_backbone(arch, backbone.stem, backbone.width_multiplier)


def finetune_encoder(ckpt: str | None, from_scratch: bool, arch: str | None, stem: str | None,
                     width_multiplier: int | None, dataset: str | None, head_layers: int,
                     seed: int) -> tuple[ResNetBackbone, KeptHead, dict]:
    """(backbone, first ``head_layers`` projection-head layers, checkpoint args or {}) to fine-tune: the
    checkpoint's weights, or with ``from_scratch`` the same shapes at a seeded random init."""
    if not from_scratch:
        if ckpt is None:
            raise UserError("--load-from is required (or pass --from-scratch for the random-init baseline)")
        state = load_checkpoint(ckpt)
        backbone, saved = backbone_from_state(state, ckpt, arch, stem, width_multiplier)
        return backbone, build_head(backbone.num_features, saved, head_layers, state), saved
    saved = checkpoint_args(load_checkpoint(ckpt)) if ckpt is not None else {}
    dataset, arch = dataset or saved.get("dataset"), arch or saved.get("arch")
    if arch is None or dataset is None:
        raise UserError("--from-scratch without a checkpoint (or with a plain state_dict) needs --arch and --dataset")
    stem = stem or saved.get("stem") or recipe_default(dataset, "stem", "--stem")
    torch.manual_seed(seed)
    backbone = build_backbone(arch, stem, width_multiplier or saved.get("width_multiplier", 1))
    return backbone, build_head(backbone.num_features, saved, head_layers, None), saved


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state_dicts hold bit-identical tensors under the same keys."""
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def evaluation_target(ckpt: str, saved: dict, dataset: str | None,
                      image_size: int | None) -> tuple[str, DatasetInfo, int]:
    """(dataset, its info, input size) to evaluate on: the options, else what the checkpoint was trained with."""
    dataset = dataset or saved.get("dataset")
    if dataset is None:
        raise UserError(f"{ckpt} does not say which dataset it was trained on: pass --dataset")
    info = input_info(dataset, saved.get("augment", "torchvision"))  # the inputs the backbone was trained on
    trained_size = saved.get("image_size") if dataset == saved.get("dataset") else None
    return dataset, info, image_size or trained_size or recipe_default(dataset, "image_size", "--image-size")


def recipe_default(dataset: str, key: str, option: str):
    """The recipe's ``key`` for ``dataset`` (training/recipe.py); a dataset without one is an error asking for
    ``option``, rather than another dataset's value."""
    value = recipe(dataset).get(key)
    if value is None:
        raise UserError(f"no default {key.replace('_', ' ')} for dataset {dataset!r}: pass {option}")
    return value

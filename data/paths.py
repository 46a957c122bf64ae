"""Resolve a dataset name to a folder through ``dataset-paths.json``.

The JSON file maps names to folders; a relative folder resolves against the JSON file's own
directory, so the repository can be moved or cloned anywhere.
"""
from __future__ import annotations

import json
import os

from utils import REPO_ROOT
from utils.errors import UserError

DEFAULT_PATHS_FILE = os.path.join(REPO_ROOT, "dataset-paths.json")


def load_paths(paths_file: str = DEFAULT_PATHS_FILE) -> dict[str, str]:
    """Read the name -> folder map, with every folder made absolute."""
    try:
        with open(paths_file) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{paths_file} not found: create it with a JSON object mapping dataset names to "
                        f'folders, e.g. {{"cifar10": "/data/cifar10"}}') from None
    except OSError as e:
        raise UserError(f"cannot read {paths_file} ({e.strerror}): check its permissions") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{paths_file} is not valid JSON ({e.msg} at line {e.lineno}): fix the file") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise UserError(f"{paths_file} must be a JSON object mapping dataset names to folder strings")
    base = os.path.dirname(os.path.abspath(paths_file))
    return {k: os.path.normpath(os.path.join(base, os.path.expanduser(v))) for k, v in raw.items()}


def resolve(name: str, paths_file: str = DEFAULT_PATHS_FILE) -> str:
    """The existing folder for dataset ``name``."""
    paths = load_paths(paths_file)
    if name not in paths:
        raise UserError(f"dataset {name!r} has no entry in {paths_file}: add \"{name}\": \"/path/to/{name}\" "
                        f"(known: {', '.join(sorted(paths))})")
    root = paths[name]
    if not os.path.isdir(root):
        raise UserError(f"dataset folder for {name!r} not found: {root} (from {paths_file}); put the data there "
                        f"or point \"{name}\" at the right folder")
    return root

"""Small helpers shared by the scripts: user-facing errors, checkpoints, logs."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root, once

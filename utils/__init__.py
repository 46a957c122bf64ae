"""Small helpers shared by the scripts: user-facing errors, checkpoints, logs."""

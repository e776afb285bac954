"""What train.py is made of: the configuration (config), checkpoints (checkpoint), process groups (distributed),
mixed precision (amp) and what rank 0 logs (logs)."""

"""What only train.py is made of: its flags parsed in two stages (config), the resumable shuffled order and the tests'
injected faults (distributed), mixed precision (amp), the run_dir's lock, signals (preemption), the schedule and what
rank 0 logs (logs). The configuration's fields, the checkpoint and the runtime are shared with inference, outside."""

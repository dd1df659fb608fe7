"""Everything that drives vLLM: engines as Ray actors (group.py, engine.py, cluster.py), weight-sync
transports (transports.py, worker_ext.py), sample-and-score (sample.py), held-out evaluation
(evaluate.py, heldout.py) and on-policy preference pairs (policy_pairs.py). Imports nothing from
train/ or rl/."""

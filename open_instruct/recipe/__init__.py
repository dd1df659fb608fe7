"""Recipes: one YAML chains SFT -> DPO -> RLVR; `run.py` reads top to bottom like a recipe runs.

schema.py (the YAML), stages.py (the one registry of stage types), load.py + checks.py (loading and
validation), memory.py + dry_run.py (the plan), state.py (skip / resume), launch.py (one stage, one
process or torchrun over nodes), lineage.py, report.py, run.py."""

"""The engine: `Watch` (watch.py) and the collaborators it owns for one run."""

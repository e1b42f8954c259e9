"""Hyper-parameter sweeps on Ray Tune: whole training runs as trials, ranked at the end (`run.py sweep`)."""

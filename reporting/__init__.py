"""Reports on training runs (`run.py report`) and the perturbation analysis of a trained agent (`run.py perturb`)."""

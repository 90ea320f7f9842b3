"""The sweep file format lives in the config stage (spt_dist/config/sweep.py), where packed
training reads it too; this name stays for the study code and its users."""
from spt_dist.config.sweep import SweepPoint, expand, is_sweep_file, load_sweep_file, parse_grid

__all__ = ["SweepPoint", "expand", "is_sweep_file", "load_sweep_file", "parse_grid"]

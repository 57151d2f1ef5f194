"""Hydra configs, mapped into the installed package as `leetbench.configs`."""

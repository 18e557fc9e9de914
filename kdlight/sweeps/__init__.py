"""Sweeps over kdlight configs: :mod:`kdlight.sweeps.seeds` runs a config over N seeds and
tabulates mean ± std of the chosen metrics (``python -m kdlight.sweeps.seeds``, see docs/sweeps.md)."""

"""Figures people look at: pair grids, traversals, reconstructions, Hinton diagrams."""

from .pairs import pair_grid

__all__ = ["pair_grid"]

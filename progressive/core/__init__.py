"""Shared low-level helpers: errors, files, resolutions, images, grids."""

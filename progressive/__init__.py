"""progressive: divergence-triangle training of generator, energy and inference models, grown
layer by layer from 4x4 to 1024x1024."""

__version__ = "0.1.0"

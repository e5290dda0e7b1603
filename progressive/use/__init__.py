"""What a trained run is used for: sampling, interpolation, scoring, inpainting, evaluation."""

"""Image and model metrics, and the evaluation at each stage end."""

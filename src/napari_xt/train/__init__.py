"""Training and evaluation of xT models: crops of N × N regions, losses, the loop, metrics."""

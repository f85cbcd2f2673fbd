"""Runtime: argument checks, generated PyTorch steps and the reference executors."""

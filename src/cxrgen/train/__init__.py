"""Training: the loss on one batch (pure) and the trainers of each part."""

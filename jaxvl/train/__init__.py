"""Training: the pretraining objective (step building blocks); the trainer comes with the pretraining issue."""

"""Converters from PyTorch state dicts (VOLTA, HF transformers) to jaxvl parameter trees and back."""

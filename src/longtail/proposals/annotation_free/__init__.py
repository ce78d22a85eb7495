"""Annotation-free mask proposals: UCM regions, Free Mask, multi-k spectral masks, FreeSOLO."""

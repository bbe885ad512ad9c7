"""Flax models: ResNet-50 body, preprocessing layers, multilabel head, Grad-CAM."""

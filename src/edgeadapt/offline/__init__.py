"""Offline (cloud) stages: LoRA fine-tuning, the elastic knowledge base and the FM <-> KB neuron index."""

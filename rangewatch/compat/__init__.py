"""Compatibility: the two Lightning namespaces, basicsr's torchvision shim."""

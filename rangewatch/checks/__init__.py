"""Checks: inference, pixel rules, fixes, latents and numerics, on the host at check steps."""

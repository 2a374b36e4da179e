"""Taps: where tensors are seen (batch walking, module hooks, the in-graph hook under torch.compile)."""

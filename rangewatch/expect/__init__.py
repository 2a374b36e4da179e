"""Expectations: the conventions catalogue and what models and data transforms say a tap should carry."""

"""The diffusers pipeline front end (`watch_pipeline`) and its checks."""

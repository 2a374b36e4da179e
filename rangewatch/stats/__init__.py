"""Statistics: device-side accumulators and their kernels, the value sample read at check steps."""

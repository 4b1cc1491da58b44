"""The pure pieces of the four phases: normalization, warmup, Gauss-Newton,
accumulation, linear algebra, covariance."""

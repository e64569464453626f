import s4d  # noqa: F401  (first, before a benchmark loads torch: it sets OpenMP's wait policy)

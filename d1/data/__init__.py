"""Task data: reading records from files, Hub datasets and S3 (:mod:`d1.data.io`); the shipped benchmark test sets (``benchmarks/``)."""

"""The pure core: data types and decisions, with no I/O and no driver imports."""

"""The reconciliation scan: Redis read in chunks against the database in batches."""

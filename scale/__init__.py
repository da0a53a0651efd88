"""The scale-out local cluster (PostgreSQL + Prefect server + moto S3 + process workers) and its load/fault scenario."""

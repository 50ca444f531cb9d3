"""The Dagster-free data layer: raw parsing, the sample dump, DuckDB SQL, features, the report."""

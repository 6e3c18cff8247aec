"""Persistence shared by the CLI, the dashboard and the workers: run store, job records, run slot, run files."""

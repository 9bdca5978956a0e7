"""The job stores: the adapters behind ``supervisor.store.JobStore``."""

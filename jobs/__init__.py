"""The Django app that stores, runs and shows Portico jobs."""

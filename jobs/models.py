"""The job store: the database tables behind the queue adapter."""

"""The ports: domain models and the abstract interfaces adapters implement."""

"""The bitsweep service: the command line, the REST API and the service's own database."""

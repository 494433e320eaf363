"""`python -m mlflow_gcp` is `mlflow-gcp`."""

from .cli import main

main()

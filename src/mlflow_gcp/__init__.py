"""mlflow-gcp: a production MLflow tracking server on Google Cloud, and a local emulator to run it on."""

__version__ = "0.1.0"

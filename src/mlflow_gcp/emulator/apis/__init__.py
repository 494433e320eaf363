"""One module (or package) per emulated Google Cloud API."""

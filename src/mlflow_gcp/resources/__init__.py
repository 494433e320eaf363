"""One module per GCP resource, each with the same small surface (see ``engine.Resource``)."""
